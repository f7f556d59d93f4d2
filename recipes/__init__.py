"""One-off scripts that made a shipped checkpoint (``python -m recipes.<name>``).

Not part of the wheel and never imported by the library: each reads the data under
``../shared/data/``, trains, chooses thresholds on held-out data, measures, and writes
a checkpoint with its card.
"""
