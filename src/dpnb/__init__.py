"""dpnb: helpers for the DP deep learning book."""
__version__ = "0.1.0"
