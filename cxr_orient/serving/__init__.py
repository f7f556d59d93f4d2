"""One inference process per card, fed by every pool process (``CXR_INFERENCE=served``).

In the prefork layout each pool process loads the model and runs it on its own batches:
it decodes a batch, predicts, records, then decodes the next, and a GPU worker spends a
minute starting 16 copies of the model on one card. Served, the worker's main process
starts one inference process per card (:func:`start_servers`, before the pool forks);
the pool processes read, decode and record only, and hand each batch's ``size x size``
uint8 images to an inference process over a Unix socket (:class:`ServedClassifier`, the
:class:`~cxr_orient.modelstore.Classifier` of that process with the forward pass done
elsewhere). The inference process joins whatever batches are waiting into one forward
pass (up to ``max_batch`` images), so the card runs while every pool process decodes
its next batch, from the first batch on.

The answer is the same function of the same pixels: the inference process loads the
same checkpoint (its SHA-256 checked there), the pool process keeps the card (the
temperature, the thresholds) and turns the raw outputs into predictions with
:meth:`~cxr_orient.modelstore.Classifier.post_process` as before.

Modules: :mod:`~cxr_orient.serving.wire` (the messages), :mod:`~cxr_orient.serving.client`
(:class:`ServedClassifier`, in a pool process), :mod:`~cxr_orient.serving.server` (the
inference process, ``python -m cxr_orient.serving.server``) and
:mod:`~cxr_orient.serving.processes` (starting and stopping them, in the worker's main
process). This package's ``__init__`` imports no framework: the prefork parent imports
it and must never load Keras.
"""

from __future__ import annotations

from cxr_orient.serving.processes import (
    card_count,
    server_sockets,
    socket_for,
    start_servers,
    stop_servers,
)

__all__ = ["card_count", "server_sockets", "socket_for", "start_servers", "stop_servers"]
