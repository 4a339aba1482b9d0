"""pixelmill: a self-hosted image-generation server with a cost ledger."""

__version__ = "0.1.0"
