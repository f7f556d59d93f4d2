"""Celery workers: ``celery -A worker worker`` finds the app in :mod:`worker.celery`.

Nothing here imports Keras: the model is loaded in each pool process after fork.
"""
