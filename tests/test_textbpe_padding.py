"""unigap.textbpe.place_tokens: a small trained BPE padded to a real checkpoint's vocabulary size."""

from __future__ import annotations

import pytest
from unigap.textbpe import place_tokens, train_bpe

SPECIALS = ["<s>", "</s>", "<pad>", "<img>"]
CORPUS = ["a red square left of a blue circle", "does this image show a green bar"] * 50


def test_specials_move_to_their_ids_and_text_encodes_the_same():
    core = train_bpe(CORPUS, 120, SPECIALS, prepend="<s>")
    placed = place_tokens(core, {"<s>": 1000, "</s>": 1001, "<pad>": 1002, "<img>": 1500}, 2048)
    assert placed.get_vocab_size() == 2048
    assert [placed.token_to_id(t) for t in SPECIALS] == [1000, 1001, 1002, 1500]
    text = "a red circle"
    before, after = core.encode(text), placed.encode(text)
    assert after.tokens == before.tokens and after.ids[0] == 1000  # BOS prepended at its new id
    assert placed.decode(after.ids) == text
    assert placed.encode("x <img> y").ids.count(1500) == 1  # the special token is still matched whole


def test_bad_requests_are_refused():
    core = train_bpe(CORPUS, 120, SPECIALS)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        place_tokens(core, {"<nope>": 5}, 2048)
    with pytest.raises(ValueError, match="distinct and below"):
        place_tokens(core, {"<s>": 5000}, 2048)
    with pytest.raises(ValueError, match="do not fit"):
        place_tokens(core, {}, 50)
