"""The Show-o v1 family (``model_type == "showo"``): everything unigap knows about Show-o lives in this
folder: the model (transformers' Phi + a clean-room MAGVIT-v2, omni-attention), the MaskGIT sampler,
the adapter (chat format, token layout, losses, DPO estimator, judge), tiny models and the converter
of the released checkpoints."""

from . import modeling  # noqa: F401  (registers model_type "showo" with transformers' Auto classes)
from .adapter import ShowoAdapter, ShowoSampling
from .checkpoint import processor_class
from .tiny import TinySpec, build_tiny_showo

processor_class()  # AutoProcessor knows ShowoProcessor

__all__ = ["ShowoAdapter", "ShowoSampling", "TinySpec", "build_tiny_showo"]
