"""kat-transformer: the Kolmogorov-Arnold Transformer (Yang & Wang, arXiv 2409.10594) for PyTorch.

Importing ``kat`` registers the KAT models with timm.
"""
from .ops import group_rational, group_rational_channels_first, group_rational_reference

__version__ = "0.1.0"

__all__ = ["group_rational", "group_rational_channels_first", "group_rational_reference", "__version__"]
