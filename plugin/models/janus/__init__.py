"""The Janus / Janus-Pro family (``model_type == "janus"`` in transformers): everything unigap knows
about Janus lives in this folder (adapter: loading, chat format, token layout, sampler, losses, judge)."""

from .adapter import DEFAULT_SYSTEM, USER_FORMAT, JanusAdapter, JanusSampling
from .tiny import TinySpec, build_tiny_janus

__all__ = ["DEFAULT_SYSTEM", "USER_FORMAT", "JanusAdapter", "JanusSampling", "TinySpec", "build_tiny_janus"]
