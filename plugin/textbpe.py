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


def place_tokens(core: Any, fixed_ids: Mapping[str, int], total_size: int, filler: str = "<|reserved_{}|>") -> Any:
    """``core`` with its vocabulary renumbered to ``total_size`` ids, ``fixed_ids`` at the given ids.

    A real checkpoint's vocabulary is large and its special tokens sit at fixed ids; a tokenizer
    trained on a small corpus is padded up to it: the trained tokens keep their order from id 0,
    each token of ``fixed_ids`` (special tokens of ``core``) moves to its id, and every other id gets
    an unused filler token (``filler.format(id)``, never produced by encoding: no merge builds it).
    """
    import json

    from tokenizers import Tokenizer

    data = json.loads(core.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    missing = [tok for tok in fixed_ids if tok not in vocab]
    if missing:
        raise ValueError(f"not in the vocabulary: {missing}")
    taken = sorted(fixed_ids.values())
    if len(set(taken)) != len(taken) or (taken and not 0 <= taken[0] <= taken[-1] < total_size):
        raise ValueError(f"fixed ids must be distinct and below {total_size}: {dict(fixed_ids)}")
    rest = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if tok not in fixed_ids]
    fixed = set(taken)
    free = (i for i in range(total_size) if i not in fixed)
    new = dict(fixed_ids)
    for tok in rest:
        new[tok] = next(free, None)
        if new[tok] is None:
            raise ValueError(f"{len(vocab)} tokens do not fit in {total_size} ids")
    new.update((filler.format(i), i) for i in free)
    data["model"]["vocab"] = dict(sorted(new.items(), key=lambda kv: kv[1]))
    for added in data["added_tokens"]:
        added["id"] = new[added["content"]]
    post = data.get("post_processor") or {}
    for entry in (post.get("special_tokens") or {}).values():
        entry["ids"] = [new[tok] for tok in entry["tokens"]]
    return Tokenizer.from_str(json.dumps(data))


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
    fixed_ids: Mapping[str, int] | None = None,
    total_size: int | None = None,
) -> Any:
    """A ``transformers`` fast tokenizer around a byte-level BPE trained offline on ``corpus``.

    ``special_tokens``: every special token, in id order (the roles named below must
    be among them).  ``prepend_bos``: encoding with special tokens starts with BOS.
    ``extra_special_tokens``: named special tokens the family's processor looks up
    (e.g. ``{"image_token": "<image_placeholder>"}``).  ``chat_template``: set on the
    tokenizer when given.  ``tokenizer_class``: a ``transformers`` fast tokenizer
    class or its name (default ``PreTrainedTokenizerFast``, which keeps
    ``tokenizer.json`` as it is).  ``total_size`` (with ``fixed_ids``): pad the vocabulary to
    that many ids with the given tokens at the given ids (see ``place_tokens``).
    """
    import transformers

    for role, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
        if token is not None and token not in special_tokens:
            raise ValueError(f"{role} {token!r} must be one of the special tokens")
    if prepend_bos and bos_token is None:
        raise ValueError("prepend_bos needs a bos_token")
    core = train_bpe(corpus, vocab_size, special_tokens, prepend=bos_token if prepend_bos else None)
    if total_size is not None:
        core = place_tokens(core, fixed_ids or {}, total_size)
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
