"""Bad input through the real CLI: a clear error that names the row or file, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import base_config, lf_train

pytestmark = pytest.mark.e2e


@pytest.fixture()
def broken_data(tmp_path, example_data):
    root = tmp_path / "data"
    shutil.copytree(example_data, root)
    return root


def _train_fails(tmp_path, config) -> str:
    proc = lf_train(config, tmp_path, expect_ok=False)
    assert proc.returncode != 0, "training should have failed"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "a failed run wrote output"
    return proc.stdout + proc.stderr


def _first_codes(root):
    row = json.loads((root / "gen_sft.json").read_text())[0]
    png = root / row["images"][0]
    return row, png, png.with_name(png.stem + ".codes.npy")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("out_of_range", "outside the model's codebook [0, 64)"),
        ("wrong_length", "has 15 codes but the model draws 16 per image"),
        ("missing_png", "does not exist"),
        ("missing_codes", ".codes.npy does not exist"),
        ("corrupt_codes", "is not a readable .npy array"),
    ],
)
def test_bad_generation_row(tmp_path, tiny_model, broken_data, damage, message):
    row, png, codes = _first_codes(broken_data)
    if damage == "out_of_range":
        np.save(codes, np.array([3] * 15 + [64], dtype=np.int32))
    elif damage == "wrong_length":
        np.save(codes, np.zeros(15, dtype=np.int32))
    elif damage == "missing_png":
        png.unlink()
    elif damage == "missing_codes":
        codes.unlink()
    else:
        codes.write_bytes(b"not numpy")
    text = _train_fails(tmp_path, base_config(tiny_model, broken_data, "unigap_gen_sft", tmp_path / "out"))
    assert message in text, text[-2000:]
    named = codes.name if damage != "missing_png" else png.name
    assert named in text, "the error must name the file"
    assert row["messages"][0]["content"] in text, "the error must name the row's prompt"


def test_dpo_row_with_wrong_image_count(tmp_path, tiny_model, broken_data):
    rows = json.loads((broken_data / "gen_dpo.json").read_text())
    rows[1]["images"] = rows[1]["images"][:1]
    (broken_data / "gen_dpo.json").write_text(json.dumps(rows))
    cfg = base_config(tiny_model, broken_data, "unigap_gen_dpo", tmp_path / "out", stage="dpo")
    text = _train_fails(tmp_path, cfg)
    assert "a DPO row has 1 images but 0 prompt + 1 chosen + 1 rejected placeholders" in text
    assert rows[1]["messages"][0]["content"] in text


def test_cutoff_len_that_cuts_an_image(tmp_path, tiny_model, broken_data):
    cfg = base_config(tiny_model, broken_data, "unigap_gen_sft", tmp_path / "out", cutoff_len=20)
    text = _train_fails(tmp_path, cfg)
    assert "cutoff_len=20 cut a generated image of the row starting" in text
    assert "raise cutoff_len to at least" in text


def test_non_janus_model_with_janus_template(tmp_path, broken_data):
    from transformers import LlamaConfig, LlamaForCausalLM

    from unigap.models.janus.tiny import TinySpec, build_tokenizer

    model_dir = tmp_path / "llama"
    tokenizer = build_tokenizer(TinySpec())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text = _train_fails(tmp_path, base_config(model_dir, broken_data, "unigap_gen_sft", tmp_path / "out"))
    assert "is a 'llama' model" in text and "template" in text, text[-2000:]


def test_yaml_key_typo_is_named_with_a_suggestion(tmp_path, tiny_model, broken_data):
    cfg = base_config(tiny_model, broken_data, "unigap_gen_sft", tmp_path / "out", gen_promt_dropout=0.2)
    text = _train_fails(tmp_path, cfg)
    assert "'gen_promt_dropout' (did you mean 'gen_prompt_dropout'?)" in text


def test_plugin_key_out_of_range(tmp_path, tiny_model, broken_data):
    cfg = base_config(tiny_model, broken_data, "unigap_gen_sft", tmp_path / "out", gen_prompt_dropout=1.5)
    assert "gen_prompt_dropout must be in [0, 1), got 1.5" in _train_fails(tmp_path, cfg)


def test_plugin_disabled_hides_the_template(tmp_path, tiny_model, broken_data):
    cfg = base_config(tiny_model, broken_data, "unigap_gen_sft", tmp_path / "out")
    proc = lf_train(cfg, tmp_path, env={"UNIGAP_DISABLE": "1"}, expect_ok=False)
    assert proc.returncode != 0
    assert "Template janus does not exist" in proc.stdout + proc.stderr
