"""What this installation can run: checked before work starts, without importing Keras.

``pip install -e .`` without the ``cpu`` extra gives Keras without a backend; a worker
then crash-loops in every pool process and the demo waits for ever. The demo,
``enqueue --wait`` and the worker ask :func:`missing_backend` first and stop with its one
line instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

#: Keras backend name -> the module it needs and the install that provides it here.
BACKENDS = {
    "tensorflow": ("tensorflow", "pip install -e '.[cpu]' (or '.[gpu]' on a GPU host)"),
    "jax": ("jax", "pip install 'jax[cpu]' (or the CUDA build on a GPU host)"),
    "torch": ("torch", "pip install torch"),
    "numpy": ("numpy", "pip install numpy"),
}


def keras_backend_name() -> str:
    """The backend Keras will load: ``KERAS_BACKEND``, else ``$KERAS_HOME/keras.json``
    (``~/.keras``), else TensorFlow, as Keras itself decides."""
    named = os.environ.get("KERAS_BACKEND")
    if named:
        return named
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        configured = json.loads((home / "keras.json").read_text(encoding="utf-8"))
        return str(configured.get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def missing_backend() -> str | None:
    """None when Keras and its backend are installed; else one line: what is missing and
    the command that installs it."""
    if importlib.util.find_spec("keras") is None:
        return "Keras is not installed: pip install -e '.[cpu]'"
    backend = keras_backend_name()
    if backend not in BACKENDS:
        return f"KERAS_BACKEND={backend!r} is not a Keras backend (one of {', '.join(BACKENDS)})"
    module, install = BACKENDS[backend]
    if importlib.util.find_spec(module) is None:
        return (
            f"Keras backend {backend!r} is not installed ({module} missing), so no "
            f"model can run: {install}"
        )
    return None
