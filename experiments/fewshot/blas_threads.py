"""One logistic-regression fit of the linear probe's size with the default BLAS threads vs one
(why ``adapt.methods.linear`` limits BLAS to one thread). Reads a feature file written by
``linear_recipe.py`` (``features-<data>.npz``).

    python experiments/fewshot/blas_threads.py /tmp/acc/study/features-_tmp_acc_drawn_dev100.npz
    OPENBLAS_NUM_THREADS=1 python experiments/fewshot/blas_threads.py /tmp/acc/study/features-_tmp_acc_drawn_dev100.npz
"""

import sys
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

warnings.simplefilter("ignore")
stored = np.load(sys.argv[1])
x = stored["avg"][stored["have"][:128]]  # 128 images x 8 views x 472
y = np.repeat(np.arange(4), 32)
for c in (0.01, 1, 100, 1e4):
    for name, (xx, yy) in {"1 view": (x[:, 0], y), "8 views": (x.reshape(-1, x.shape[2]), np.repeat(y, 8))}.items():
        t = time.time()
        model = LogisticRegression(C=c, max_iter=2000).fit(xx, yy)
        print(f"C={c:g} {name}: {model.n_iter_[0]} iterations, {time.time() - t:.3f} s")
