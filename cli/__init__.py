"""The ``cxr-orient`` command line: the top of the house (the composition root).

One module per verb group, joined in ``cli.main`` (celery's ``celery/bin/``): each
command reads its options, calls a plain function of the package that owns the work and
shows the outcome through ``cli.formatting``. Imports of the library are deferred into
the commands, so ``--help`` loads nothing heavy. Nothing below imports this package
(tests/unit/test_architecture.py).
"""
