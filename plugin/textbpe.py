"""One offline byte-level BPE tokenizer builder (no download, seconds on a CPU).

The families' tiny test models (``unigap.models.<family>.tiny``) and the ShapesWorld model
(``unigap.shapesworld.model``) both train their text tokenizer here, on their own
corpus.  Nothing in it is specific to a model family: the family passes its
special tokens, the tokens' roles, the ``transformers`` class to wrap the
tokenizer in and any extras (named special tokens, a chat template).

The result is deterministic: the same corpus and settings give a byte-identical
``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def train_bpe(corpus: Iterable[str], vocab_size: int, special_tokens: Sequence[str], prepend: str | None = None) -> Any:
    """A ``tokenizers.Tokenizer``: byte-level BPE (no prefix space) trained on ``corpus``.

    ``special_tokens`` get the first ids, in order.  ``prepend`` (a special token,
    usually BOS): encoding with special tokens puts it before each sequence.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer)
    if prepend is not None:
        if prepend not in special_tokens:
            raise ValueError(f"the token to prepend ({prepend!r}) must be one of the special tokens")
        core.post_processor = processors.TemplateProcessing(
            single=f"{prepend} $A", pair=f"{prepend} $A {prepend} $B", special_tokens=[(prepend, core.token_to_id(prepend))]
        )
    return core


def build_bpe_tokenizer(
    corpus: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    prepend_bos: bool = True,
    extra_special_tokens: Mapping[str, str] | None = None,
    chat_template: str | None = None,
    model_max_length: int = 4096,
    tokenizer_class: type | str | None = None,
) -> Any:
    """A ``transformers`` fast tokenizer around a byte-level BPE trained offline on ``corpus``.

    ``special_tokens``: every special token, in id order (the roles named below must
    be among them).  ``prepend_bos``: encoding with special tokens starts with BOS.
    ``extra_special_tokens``: named special tokens the family's processor looks up
    (e.g. ``{"image_token": "<image_placeholder>"}``).  ``chat_template``: set on the
    tokenizer when given.  ``tokenizer_class``: a ``transformers`` fast tokenizer
    class or its name (default ``PreTrainedTokenizerFast``, which keeps
    ``tokenizer.json`` as it is).
    """
    import transformers

    for role, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
        if token is not None and token not in special_tokens:
            raise ValueError(f"{role} {token!r} must be one of the special tokens")
    if prepend_bos and bos_token is None:
        raise ValueError("prepend_bos needs a bos_token")
    core = train_bpe(corpus, vocab_size, special_tokens, prepend=bos_token if prepend_bos else None)
    if tokenizer_class is None:
        tokenizer_class = transformers.PreTrainedTokenizerFast
    elif isinstance(tokenizer_class, str):
        tokenizer_class = getattr(transformers, tokenizer_class)
    roles = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)) if v is not None}
    kwargs: dict[str, Any] = {"tokenizer_object": core, **roles, "model_max_length": model_max_length}
    if extra_special_tokens:
        kwargs["extra_special_tokens"] = dict(extra_special_tokens)
    tokenizer = tokenizer_class(**kwargs)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
