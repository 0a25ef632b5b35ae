"""The `unigap` command and the shipped yaml_examples, run as a user would."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import BIN, ROOT, run

DEFAULT_MODEL = ROOT / "models" / "shapes-janus"  # committed (a tiny Janus trained on ShapesWorld)


@pytest.mark.e2e
def test_tiny_model_command_writes_a_loadable_janus(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    out = tmp_path / "tiny"
    proc = run([str(BIN / "unigap"), "tiny-model", "--out", str(out), "--codebook-size", "128", "--image-size", "64"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == "JanusForConditionalGeneration"
    assert AutoProcessor.from_pretrained(out).tokenizer.boi_token == "<begin_of_image>"
    assert AutoTokenizer.from_pretrained(out).image_token == "<image_placeholder>"
    assert model.config.vq_config.num_embeddings == 128 and model.config.vision_config.num_image_tokens == 64
    # never clobbers an existing directory
    again = run([str(BIN / "unigap"), "tiny-model", "--out", str(out)])
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.e2e
def test_generate_command_writes_png_and_exact_codes(tmp_path, tiny_model, tiny):
    from unigap.codes import load_codes
    from unigap.models.janus import JanusAdapter
    from unigap.seeds import image_seed

    out = tmp_path / "gen"
    cmd = [str(BIN / "unigap"), "generate", "--model", str(tiny_model), "--prompt", "a red square",
           "--prompt", "a blue circle", "--num", "2", "--seed", "3", "--batch-size", "3", "--out", str(out)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["prompt000_00.png", "prompt000_01.png", "prompt001_00.png", "prompt001_01.png"]
    model, tokenizer, _ = tiny
    adapter = JanusAdapter(model, tokenizer)
    seeds = [image_seed(3, i, k) for i in range(2) for k in range(2)]
    expected = adapter.generate(["a red square"] * 2 + ["a blue circle"] * 2, seeds=seeds)
    got = torch.tensor([load_codes(p.with_name(p.stem + ".codes.npy"), adapter.spec).tolist() for p in pngs])
    assert torch.equal(got, expected), "codes on disk must be exactly what was generated"
    bad = run([str(BIN / "unigap"), "generate", "--model", str(tiny_model), "--prompt", " ", "--out", str(tmp_path / "x")])
    assert bad.returncode == 2 and "non-empty" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_generate_dtype_option(tmp_path, tiny_model):
    out = tmp_path / "bf16"
    cmd = [str(BIN / "unigap"), "generate", "--model", str(tiny_model), "--prompt", "a red square", "--num", "2",
           "--dtype", "bfloat16", "--device", "cpu", "--out", str(out)]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("*.codes.npy"))) == 2
    bad = run([str(BIN / "unigap"), "generate", "--model", str(tiny_model), "--prompt", "a", "--dtype", "float64",
               "--out", str(tmp_path / "x")])
    assert bad.returncode == 2 and "float64" in bad.stderr and not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_generate_rejects_an_adapter_for_another_model(tmp_path, tiny_model):
    other = tmp_path / "other"
    assert run([str(BIN / "unigap"), "tiny-model", "--out", str(other), "--hidden-size", "32"]).returncode == 0
    from peft import LoraConfig, get_peft_model
    from transformers import JanusForConditionalGeneration

    lora = get_peft_model(JanusForConditionalGeneration.from_pretrained(other), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    proc = run([str(BIN / "unigap"), "generate", "--model", str(tiny_model), "--adapter", str(tmp_path / "adapter"),
                "--prompt", "a red square", "--out", str(tmp_path / "g")])
    assert proc.returncode == 2 and "does not fit this model" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.e2e
def test_yaml_examples_run_as_is_from_the_repo_root(tmp_path):
    """The shipped training YAML files and the merge example, on the embedded default and its data."""
    assert (DEFAULT_MODEL / "config.json").exists(), "the embedded default model models/shapes-janus is missing"
    cli = str(BIN / "llamafactory-cli")
    outs = {}
    for name in ("gap_sft", "gap_dpo", "gap_sft_full", "gap_dpo_full"):
        outs[name] = tmp_path / name
        proc = run([cli, "train", f"yaml_examples/{name}.yaml", f"output_dir={outs[name]}"], cwd=ROOT)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"
        history = json.loads((outs[name] / "trainer_state.json").read_text())["log_history"]
        losses = [row["loss"] for row in history if "loss" in row]
        assert losses and losses[-1] < losses[0], (name, losses)
    for name in ("gap_dpo", "gap_dpo_full"):
        assert json.loads((outs[name] / "unigap_reference_check.json").read_text())["unchanged"]
    # the curriculum examples, shortened (their data is the self-play dataset `make setup` builds)
    assert (ROOT / "outputs/examples/data/gap_selfplay/discard_pool.jsonl").exists(), "run `make setup`"
    for name, pool in (("gap_csft", "gap_selfplay"), ("gap_dpo_curriculum", "gap_selfplay_dpo")):
        pool_size = len((ROOT / "outputs/examples/data" / pool / "discard_pool.jsonl").read_text().splitlines())
        assert pool_size > 0, f"{pool}: the example self-play left no prompt for replay to retry"
        out = tmp_path / name
        proc = run([cli, "train", f"yaml_examples/{name}.yaml", f"output_dir={out}", "num_train_epochs=2",
                    "replay_epochs=1"], cwd=ROOT, env={"UNIGAP_RECORD_ORDER": "1"})
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert any("curriculum_share" in row for row in history) and any("replay_rows_added" in row for row in history)
        summary = json.loads((out / "unigap_replay/epoch_1/summary.json").read_text())
        assert summary["prompts_tried"] == pool_size and (out / "adapter_model.safetensors").exists()
    # the DPO example orders its pairs by the prompt's mean P(yes) (read back from the pairs' own metadata)
    order = json.loads((tmp_path / "gap_dpo_curriculum/unigap_order.rank0.json").read_text())
    data = ROOT / "outputs/examples/data"
    pairs = [json.loads(line) for line in (data / "gap_selfplay_dpo/data.jsonl").read_text().splitlines()]
    by_image = {str(data / r["unigap"]["image"]): 1.0 - r["unigap"]["mean_p_yes"] for r in pairs}
    base = len(pairs)
    assert order["scores"][:base] == pytest.approx([by_image[str(ROOT / k)] for k in order["rows"][:base]])
    first = order["epochs"][0][1]
    open_at_start = sorted(order["scores"][:base])[int(0.3 * base + 0.999) - 1]  # curriculum_start: 0.3
    assert order["scores"][first[0]] <= open_at_start
    merged = tmp_path / "merged"
    proc = run([cli, "export", "yaml_examples/merge_lora.yaml", f"adapter_name_or_path={outs['gap_sft']}",
                f"export_dir={merged}"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (merged / "model.safetensors").exists() and (merged / "generation_config.json").exists()


@pytest.mark.e2e
def test_shipped_example_data_is_reproducible_from_the_default_model(tmp_path):
    """yaml_examples/data is exactly what `unigap example-data` writes for the embedded default."""
    import filecmp

    assert (DEFAULT_MODEL / "config.json").exists(), "the embedded default model models/shapes-janus is missing"
    out = tmp_path / "data"
    proc = run([str(BIN / "unigap"), "example-data", "--model", str(DEFAULT_MODEL), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = ROOT / "yaml_examples" / "data"
    files = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(shipped, out, files, shallow=False)
    assert not mismatch and not errors, mismatch + errors


@pytest.mark.e2e
def test_showo_yaml_examples_run_as_is_from_the_repo_root(tmp_path):
    """The Show-o examples on models/tiny-showo and the self-play data `make setup` builds for it."""
    showo = ROOT / "models" / "tiny-showo"
    data = ROOT / "outputs/examples-showo/data"
    assert (showo / "config.json").exists() and (data / "dataset_info.json").exists(), "run `make setup`"
    proc = run([str(BIN / "unigap"), "selfplay", "yaml_examples/showo_selfplay.yaml", f"output_dir={tmp_path / 'sp'}",
                "num_candidates=1", "steps=2", "progress=false"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_info = json.loads((tmp_path / "sp" / "run.json").read_text())
    sampling = {k: run_info["config"].get(k) for k in ("guidance_scale", "steps", "temperature", "compound_temperature")}
    assert sampling == {"guidance_scale": 1.75, "steps": 2, "temperature": 1.0, "compound_temperature": True}
    cli = str(BIN / "llamafactory-cli")
    for name in ("showo_sft", "showo_dpo"):
        out = tmp_path / name
        proc = run([cli, "train", f"yaml_examples/{name}.yaml", f"output_dir={out}"], cwd=ROOT)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        losses = [row["loss"] for row in history if "loss" in row]
        assert losses and losses[-1] < losses[0], (name, losses)
    check = json.loads((tmp_path / "showo_dpo" / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["precomputed_pairs"] > 0, check
    pool = len((data / "showo_selfplay" / "discard_pool.jsonl").read_text().splitlines())
    out = tmp_path / "showo_csft"
    proc = run([cli, "train", "yaml_examples/showo_csft.yaml", f"output_dir={out}", "num_train_epochs=2",
                "replay_epochs=1"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "unigap_replay/epoch_1/summary.json").read_text())
    assert summary["prompts_tried"] == pool > 0 and summary["settings"]["steps"] == 8
