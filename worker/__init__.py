"""compute-worker: a per-host compute agent speaking oslo.messaging's wire format."""

__version__ = "0.1.0"
