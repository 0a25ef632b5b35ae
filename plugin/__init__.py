"""unigap: self-improvement of unified multimodal LLMs inside LLaMA-Factory.

This package is imported at interpreter start-up by a one-line ``.pth`` file
(see ``unigap._bootstrap``), so this module must stay free of imports: no torch,
no transformers, no LLaMA-Factory.
"""

__version__ = "0.1.0"
