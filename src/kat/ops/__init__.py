"""Operators: the group-rational op, and composites built on its kernels."""
from .group_rational import group_rational, group_rational_channels_first, group_rational_reference

__all__ = ["group_rational", "group_rational_channels_first", "group_rational_reference"]
