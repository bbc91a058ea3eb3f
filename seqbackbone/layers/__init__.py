"""Building blocks shared by the backbone and the models."""

from .norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
