"""One module per CLI verb (``HELP``, ``OPTIONS``, ``call``, ``run``); shared options live in ``common``."""
