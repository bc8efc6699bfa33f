"""cctrain: multi-party confidential training."""

__version__ = "0.1.0"
