"""The HTTP side: ``create_app``, the error table, and one package per API dialect."""
