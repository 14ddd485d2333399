"""The choices of the anomaly score, torch-free: the CLI validates ``--hp`` with them in
milliseconds (``adapt.methods.configs``), ``adapt.core.anomaly_head`` builds the score from them."""

COMBINE = ("local", "max", "sum")  # local = the patch score alone (PatchCore)
IMAGE_SCORES = ("gaussian", "knn")
IMAGE_STATS = ("mean", "mean_std")
