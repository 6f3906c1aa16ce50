"""multitag: an orchestrated MLOps pipeline for multi-label image classification."""

__version__ = "0.1.0"
