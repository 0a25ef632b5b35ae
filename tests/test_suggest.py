"""unigap.suggest: the one "did you mean"."""

from __future__ import annotations

from unigap.suggest import closest, did_you_mean, unknown_keys_message

KEYS = ["num_candidates", "cfg_scale", "temperature", "top_k", "top_p", "seed", "judge_threshold", "output_dir"]


def test_a_one_letter_typo_is_found():
    assert did_you_mean("num_candidate", KEYS) == " (did you mean 'num_candidates'?)"
    assert did_you_mean("temprature", KEYS) == " (did you mean 'temperature'?)"
    assert did_you_mean("sed", KEYS) == " (did you mean 'seed'?)"


def test_a_far_word_gets_nothing():
    assert did_you_mean("learning_rate", KEYS) == ""
    assert did_you_mean("xyz", KEYS) == ""
    assert did_you_mean("anything", []) == ""


def test_the_cutoff_decides_and_the_order_of_known_does_not():
    # 'judge_thresh' is 'judge_threshold' cut short (ratio 0.89): found at 0.6 and 0.75, not at 0.95
    assert closest("judge_thresh", KEYS) == "judge_threshold"
    assert closest("judge_thresh", KEYS, cutoff=0.75) == "judge_threshold"
    assert closest("judge_thresh", KEYS, cutoff=0.95) is None
    # 'top_q' is as close to 'top_k' as to 'top_p': the answer is the same whatever the order given
    assert closest("top_q", KEYS) == closest("top_q", list(reversed(KEYS))) == closest("top_q", set(KEYS))


def test_unknown_keys_message_names_every_key_with_its_hint():
    message = unknown_keys_message(["tempreature", "zzz", "cfg_scal"], KEYS, where="train.yaml")
    assert message == (
        "unknown key(s) in train.yaml: 'cfg_scal' (did you mean 'cfg_scale'?), "
        "'tempreature' (did you mean 'temperature'?), 'zzz'"
    )
