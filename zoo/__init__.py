"""zoo: turn a registry of embedding models into verified, deployable artifacts."""

__version__ = "0.1.0"
