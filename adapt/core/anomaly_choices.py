"""The choices of the anomaly score, torch-free: the CLI validates ``--hp`` with them in
milliseconds (``adapt.methods.configs``), ``adapt.core.anomaly_head`` builds the score from them."""

COMBINE = ("local", "image", "max", "sum")  # what a head computes: local = the patch score alone (PatchCore), image = the image score alone
AUTO = "auto"  # --hp combine=auto: one of AUTO_CANDIDATES per fit, by validation ROC-AUC (adapt.methods.patchcore.choose_combine)
AUTO_CANDIDATES = ("local", "image", "max")
AUTO_FALLBACK = "max"  # where validation holds no defective image
COMBINE_CHOICES = (AUTO, *COMBINE)
IMAGE_SCORES = ("gaussian", "knn")
IMAGE_STATS = ("mean", "mean_std")
