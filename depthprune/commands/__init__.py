"""One module per CLI verb (``HELP``, ``add_arguments``, ``run``); shared options live in ``common``."""
