"""Celery workers: ``celery -A worker worker`` finds the app in :mod:`worker.celery`.

Nothing here imports Keras: the model is loaded in each pool process after fork.
"""

import os

# One pool process per core is the deployment rule; numpy's BLAS must not start a
# thread per core inside each of them (the JPEG 2000 resampling is a matrix product):
# on a 16-core GPU node that oversubscription made decoding five times slower.
# Set before anything imports numpy; an operator's explicit value wins.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
