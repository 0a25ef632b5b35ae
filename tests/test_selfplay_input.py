"""`unigap selfplay` input: prompt sources, and every bad input named clearly with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import BIN, run
from unigap.prompts import PromptError, load_prompt_file
from unigap.selfplay import SelfPlayError, load_config, run_selfplay


def _config(model, prompts, out, **extra):
    items = [f"model_name_or_path={model}", f"prompts={prompts}", f"output_dir={out}", "num_candidates=2", "progress=false"]
    items += [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, items)


def _jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"prompt": "a red square"}, {"prompt": ""}], ":2: the prompt is empty or whitespace"),
        ([{"prompt": "a red square"}, {"prompt": "a b"}, {"prompt": "  \t "}], ":3: the prompt is empty or whitespace"),
        ([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}], ":3: duplicate id 'a' (first used at"),
        ([{"prompt": "a red square"}, b'{"prompt": "caf\xe9"}'], ":2: not valid UTF-8"),
        ([{"prompt": "a red square"}, {"prompt": "b"}, b'{"prompt": "x",}'], ":3: malformed JSON"),
        ([["a red square"]], ":1: each line must be a JSON object"),
        ([{"text": "a red square"}], ":1: no 'prompt'"),
        ([{"prompt": 5}], ":1: 'prompt' must be a string"),
        ([{"prompt": "a", "difficulty": ["easy"]}], ":1: 'difficulty' must be a string or a number"),
        ([], "holds no prompts"),
    ],
)
def test_bad_prompt_files_name_the_line_and_write_nothing(lines, message, tiny_model, tmp_path):
    prompts = _jsonl(tmp_path / "prompts.jsonl", lines)
    out = tmp_path / "run"
    with pytest.raises(PromptError) as err:
        run_selfplay(_config(tiny_model, prompts, out))
    assert message in str(err.value) and str(prompts) in str(err.value)
    assert not out.exists()


def test_command_line_error_is_one_clear_line_with_exit_code_2(tiny_model, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": " "}])
    proc = run([str(BIN / "unigap"), "selfplay", f"model_name_or_path={tiny_model}", f"prompts={prompts}",
                f"output_dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"unigap selfplay: error: {prompts}:2: the prompt is empty or whitespace"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_candidates=0", "num_candidates must be an integer >= 1, got 0"),
        ("num_candidates=-3", "num_candidates must be an integer >= 1, got -3"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("judge_threshold=1.5", "judge_threshold must be in [0, 1]"),
        ("judge_question=Is it good?", "judge_question must contain '{prompt}'"),
        ("temperature=0", "temperature must be > 0"),
        ("top_p=2", "top_p must be in (0, 1]"),
        ("num_candidate=3", "unknown self-play key 'num_candidate' (did you mean 'num_candidates'?)"),
        ("cfg_scale=high", "cfg_scale must be a number, got 'high'"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(override, message, tiny_model, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red square"}])
    with pytest.raises(SelfPlayError) as err:
        load_config(None, [f"model_name_or_path={tiny_model}", f"prompts={prompts}", f"output_dir={tmp_path}/o", override])
    assert message in str(err.value)


def test_model_without_a_generation_branch_is_refused(tmp_path):
    from transformers import LlamaConfig

    text_only = tmp_path / "llama"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=100).save_pretrained(text_only)
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red square"}])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="'llama' model without an image-generation branch"):
        run_selfplay(_config(text_only, prompts, out))
    assert not out.exists()


def test_adapter_that_does_not_fit_the_model_is_refused(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import JanusForConditionalGeneration

    from unigap.models.janus.tiny import TinySpec, build_tiny_janus

    other = build_tiny_janus(tmp_path / "other", TinySpec(hidden_size=32, num_heads=2))
    lora = tmp_path / "lora"
    peft_model = get_peft_model(
        JanusForConditionalGeneration.from_pretrained(other), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    peft_model.save_pretrained(lora)
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red square"}])
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"the adapter in .*lora does not fit this model"):
        run_selfplay(_config(tiny_model, prompts, out, adapter_name_or_path=lora))
    assert not out.exists()


def test_unwritable_or_foreign_output_dirs_are_refused_untouched(tiny_model, tmp_path):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red square"}])
    a_file = tmp_path / "file.txt"
    a_file.write_text("user data")
    with pytest.raises(SelfPlayError, match="is not writable"):
        run_selfplay(_config(tiny_model, prompts, a_file / "run"))
    with pytest.raises(SelfPlayError, match="exists and is not a directory"):
        run_selfplay(_config(tiny_model, prompts, a_file))
    assert a_file.read_text() == "user data"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.md").write_text("keep me")
    with pytest.raises(SelfPlayError, match="not empty and is not a unigap self-play run"):
        run_selfplay(_config(tiny_model, prompts, foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.md"]


def test_prompts_from_a_datasets_dataset_with_custom_columns(tiny_model, tmp_path):
    import datasets

    data = datasets.Dataset.from_dict(
        {"caption": ["a red square", "two blue circles", "a green circle"], "level": ["easy", "medium", "easy"],
         "key": ["r", "b", "g"]}
    )
    data.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "run"
    config = load_config(None, [
        f"model_name_or_path={tiny_model}", f"prompts_dataset={tmp_path / 'ds'}", "prompt_column=caption",
        "difficulty_column=level", "id_column=key", f"output_dir={out}", "num_candidates=2", "progress=false",
    ])
    summary = run_selfplay(config)
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["prompt"], r["difficulty"]) for r in recs[::2]] == [
        ("r", "a red square", "easy"), ("b", "two blue circles", "medium"), ("g", "a green circle", "easy")
    ]
    assert summary["per_difficulty"]["easy"]["n_prompts"] == 2
    with pytest.raises(PromptError, match="has no column 'prompt' \\(columns: caption, key, level\\)"):
        run_selfplay(load_config(None, [f"model_name_or_path={tiny_model}", f"prompts_dataset={tmp_path / 'ds'}",
                                        f"output_dir={tmp_path / 'run2'}"]))


def test_text_prompt_files_and_line_number_ids(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red square\n\n two blue circles \n")
    prompts = load_prompt_file(path)
    assert [(p.id, p.text) for p in prompts] == [("1", "a red square"), ("3", "two blue circles")]
