"""`unigap evidence`'s statistics, verdicts and gradient alignment (claim 6), checked independently."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unigap.shapesworld.evidence import (
    CONFIG_FILE,
    EvidenceConfig,
    EvidenceError,
    Outcomes,
    analyse,
    gradient_vectors,
    nested_bootstrap,
    outcomes,
    run_evidence,
)
from unigap.shapesworld.world import LEVELS, make_splits, render

from helpers import SYSTEM, USER, prompt_ids

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "shapes-janus"


def _table(hits: np.ndarray) -> Outcomes:
    """(seeds, prompts, samples) 0/1 outcomes, every sample counted."""
    hits = np.asarray(hits, dtype=float)
    return Outcomes(hits, np.ones_like(hits), np.full(hits.shape[:2], hits.shape[2], dtype=np.int64))


def test_nested_bootstrap_point_pairing_and_coverage():
    rng = np.random.default_rng(0)
    hits = rng.random((2, 5, 8)) < 0.4
    value, (lo, hi) = nested_bootstrap(_table(hits))
    assert value == pytest.approx(hits.mean()) and lo <= value <= hi
    # a paired difference draws the same seeds, prompts and samples on both sides
    assert nested_bootstrap(_table(hits), _table(hits)) == (0.0, [0.0, 0.0])
    better = hits | (rng.random(hits.shape) < 0.3)
    diff, (lo, hi) = nested_bootstrap(_table(better), _table(hits))
    assert diff == pytest.approx(better.mean() - hits.mean()) and lo > 0
    # one prompt of one seed: its own samples still vary (3 of 4 right: the interval spans 0.25 .. 1)
    one, ci = nested_bootstrap(_table(np.array([[[1, 1, 1, 0]]])))
    assert one == 0.75 and ci[0] <= 0.25 and ci[1] == 1.0
    # a ratio over a subset (den) and ragged cells (count) through outcomes()
    records = [[{"prompt": "a", "x": 1, "y": True}, {"prompt": "a", "x": 0, "y": False}, {"prompt": "b", "x": 1, "y": True}]]
    table = outcomes(records, ["a", "b"], lambda r: r["x"], lambda r: r["y"])
    assert table.count.tolist() == [[2, 1]] and table.value() == 1.0
    # coverage of the true rate by the 95% interval, on simulated (seeds x prompts x samples) tables
    hits_in = 0
    for _ in range(100):
        rates = np.clip(rng.normal(0.4, 0.15, size=30), 0.02, 0.98)  # prompts differ
        sim = rng.random((3, 30, 16)) < rates[None, :, None]
        _, (lo, hi) = nested_bootstrap(_table(sim), seed=int(rng.integers(1 << 30)), replicates=400)
        hits_in += lo <= rates.mean() <= hi
    assert 0.85 <= hits_in / 100 <= 1.0


def _records(acc_by_level: dict[str, float], nonu: float, und_acc: float, seeds: int = 2, rng=None):
    rng = rng or random.Random(0)
    queries = list(make_splits(0).test)
    gen, und = [], []
    for q in queries:
        for _ in range(12):
            gen.append({"prompt": q.text, "level": q.level, "correct": rng.random() < acc_by_level[q.level],
                        "p_yes": 0.1 if rng.random() < nonu else 0.9})
            truth = rng.random() < 0.5
            right = rng.random() < und_acc
            und.append({"prompt": q.text, "level": q.level, "truth": truth, "p_yes": 0.9 if truth == right else 0.1})
    return {"generation": gen, "understanding": und}


def test_verdicts_follow_the_intervals():
    """A clearly better SFT model confirms claim 3; an identical one does not."""
    rng = random.Random(1)
    base = [_records({"easy": 0.5, "medium": 0.4, "hard": 0.3}, 0.3, 0.9, rng=rng) for _ in range(2)]
    better = [_records({"easy": 0.9, "medium": 0.9, "hard": 0.8}, 0.05, 0.99, rng=rng) for _ in range(2)]
    result = analyse({"base": base, "sft": better}, [], [[{"prompt": "p", "difficulty": "easy", "accepted": True,
                                                           "correct": True}]], 0.5)
    c = result["claims"]
    assert c["3"]["verdict"] == "confirmed" and c["3"]["oracle_accuracy_sft_minus_base"]["value"] > 0.3
    assert c["4"]["verdict"] == "confirmed"
    twin = analyse({"base": base, "sft": base}, [], [[{"prompt": "p", "difficulty": "easy", "accepted": True,
                                                       "correct": True}]], 0.5)
    assert twin["claims"]["3"]["verdict"] == "not confirmed"
    assert twin["claims"]["3"]["oracle_accuracy_sft_minus_base"]["ci"] == [0.0, 0.0]
    worse = analyse({"base": better, "sft": base}, [], [[{"prompt": "p", "difficulty": "easy", "accepted": True,
                                                         "correct": True}]], 0.5)
    assert worse["claims"]["3"]["verdict"] == "refuted" and worse["claims"]["4"]["verdict"] == "refuted"
    assert set(result["table"]["base"]["oracle_accuracy"]) == {*LEVELS, "all"}


def test_evidence_refuses_an_output_made_with_other_settings(tmp_path):
    """Every stage is cached in the output directory: a cache made with other settings is never reused."""
    out = tmp_path / "ev"
    out.mkdir()
    settings = {k: v for k, v in EvidenceConfig(model=str(SHAPES)).__dict__.items() if k not in ("out", "seeds", "models")}
    (out / CONFIG_FILE).write_text(json.dumps({**settings, "generation": {"cfg_scale": 3.0}}))
    with pytest.raises(EvidenceError, match=r"generation: \{'cfg_scale': 3.0\} -> \{\}"):
        run_evidence(EvidenceConfig(model=str(SHAPES), out=str(out), seeds=(0,)))
    assert [p.name for p in out.iterdir()] == [CONFIG_FILE]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(EvidenceError, match="is not empty"):
        run_evidence(EvidenceConfig(model=str(SHAPES), out=str(user), seeds=(0,)))
    assert [p.name for p in user.iterdir()] == ["notes.txt"]


def test_gradients_match_transformers_own_losses():
    """Claim 6's two gradients equal the gradients of losses computed with transformers' own Janus forward."""
    from transformers import AutoProcessor

    from unigap.loading import load_unified

    adapter = load_unified(str(SHAPES), device="cpu")
    adapter.model.eval()
    queries = list(make_splits(0).test)[:2]
    gen, und = gradient_vectors(adapter, queries, random.Random(5))
    model, tok = adapter._base(), adapter.tokenizer
    processor = AutoProcessor.from_pretrained(SHAPES)
    params = list(model.model.language_model.parameters())
    rng = random.Random(5)
    for q, g_gen, g_und in zip(queries, gen, und):
        pixels, _ = render(q, rng)
        from PIL import Image

        image = Image.fromarray(pixels)
        codes = adapter.encode_images([image])
        ids = torch.tensor([prompt_ids(tok, q.text)])
        embeds = torch.cat([model.get_input_embeddings()(ids), model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1)
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        logits = model.model.generation_head(hidden[:, ids.shape[1] - 1 :]).float()
        loss = torch.nn.functional.cross_entropy(logits[0], codes[0])
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
        assert torch.nn.functional.cosine_similarity(ref, g_gen, dim=0) > 0.9999
        assert torch.allclose(ref.norm(), g_gen.norm(), rtol=1e-3)

        n = model.config.vision_config.num_image_tokens
        image_text = "<begin_of_image>" + "<image_placeholder>" * n + "<end_of_image>"
        head = [tok.bos_token_id] + tok.encode(SYSTEM + USER.format(image_text + "\n" + f"Does this image show {q.text}?"),
                                               add_special_tokens=False)
        yes = tok.encode(" Yes", add_special_tokens=False)[:1]
        pixel_values = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        out = model(input_ids=torch.tensor([head + yes]), pixel_values=pixel_values,
                    labels=torch.tensor([[-100] * len(head) + yes]))
        ref = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                         for g, p in zip(torch.autograd.grad(out.loss, params, allow_unused=True), params)])
        assert torch.nn.functional.cosine_similarity(ref, g_und, dim=0) > 0.999
        assert torch.allclose(ref.norm(), g_und.norm(), rtol=1e-2)


# ---------------------------------------------------------------------------------- the training recipes
def test_evidence_trains_through_the_hosts_recipes(tmp_path):
    """evidence's (and the demo's) YAML comes from unigap.host.llamafactory.recipes: every recipe's keys,
    LoRA as an option, the template from the model's family, and the file round-trips."""
    import yaml

    from unigap.host.llamafactory.recipes import Recipe, RecipeError, train_command, train_config, write_train_yaml
    from unigap.shapesworld.evidence import recipe
    from unigap.shapesworld.evidence import train_config as evidence_config

    cfg = EvidenceConfig(model=str(SHAPES))
    common = {"model_name_or_path": str(SHAPES), "do_train": True, "finetuning_type": "full", "template": "janus",
              "dataset_dir": "/d", "cutoff_len": 256, "output_dir": "/o", "overwrite_output_dir": True,
              "logging_steps": 5, "save_strategy": "no", "report_to": "none", "lr_scheduler_type": "cosine",
              "warmup_ratio": 0.1, "bf16": False, "seed": 2, "data_seed": 2, "dataloader_num_workers": 0,
              "preprocessing_num_workers": 1}
    sft = {**common, "stage": "sft", "dataset": "gap_sft", "per_device_train_batch_size": 32,
           "learning_rate": cfg.sft_lr, "num_train_epochs": cfg.sft_epochs, "gen_prompt_dropout": 0.1}
    csft = {**sft, "curriculum_difficulty": "label", "curriculum_pacing": "linear", "curriculum_start": 0.25,
            "curriculum_full_at": 0.5, "replay_epochs": str(cfg.replay_epoch), "replay_pool": "gap_sft",
            "replay_seed": 2002}
    dpo = {**common, "stage": "dpo", "dataset": "gap_dpo", "per_device_train_batch_size": 8,
           "learning_rate": cfg.dpo_lr, "num_train_epochs": cfg.dpo_epochs, "pref_beta": 0.1, "pref_loss": "sigmoid",
           "pref_ftx": 0.1}
    for kind, expected in (("sft", sft), ("csft", csft), ("dpo", dpo)):
        got = evidence_config(cfg, kind, Path("/d"), Path("/o"), 2)
        assert got == expected and list(got) == list(expected), kind
        path = write_train_yaml(tmp_path / f"{kind}.yaml", recipe(cfg, kind, Path("/d"), Path("/o"), 2))
        assert yaml.safe_load(path.read_text()) == expected
    lora = train_config(Recipe("sft", str(SHAPES), "/d", "/o", learning_rate=1e-3, epochs=3, finetuning_type="lora",
                               lora_rank=4, extra={"cutoff_len": 1024}))
    assert (lora["finetuning_type"], lora["lora_rank"], lora["lora_alpha"], lora["lora_target"]) == ("lora", 4, 16, "all")
    assert lora["cutoff_len"] == 1024
    with pytest.raises(RecipeError, match="replay_epochs"):
        train_config(Recipe("csft", str(SHAPES), "/d", "/o", learning_rate=1e-3, epochs=3))
    with pytest.raises(RecipeError, match="unknown recipe"):
        train_config(Recipe("ppo", str(SHAPES), "/d", "/o", learning_rate=1e-3, epochs=3))
    assert train_command(path)[1:] == ["train", str(path)] and train_command(path)[0].endswith("llamafactory-cli")


def test_oracle_run_reads_the_run_through_iter_records(tmp_path):
    """The oracle's verdict per record; the run is read like every other reader does (an unfinished run
    and an image path leaving the run are refused)."""
    from unigap.runs import RECORD_KEYS, RunError, RunIncompleteError
    from unigap.shapesworld.evidence import oracle_run

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    queries = list(make_splits(0).test)[:2]
    rng = random.Random(0)
    records = []
    for i, q in enumerate(queries):
        pixels, _ = render(q, rng)
        Image.fromarray(pixels).save(run / "images" / f"{i}.png")
        for prompt in (q.text, queries[1 - i].text):  # the image under its own prompt, then under the other
            records.append({**{k: None for k in RECORD_KEYS}, "prompt": prompt, "image": f"images/{i}.png"})
    with pytest.raises(RunIncompleteError):
        oracle_run(run)
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text("{}")
    assert [r["correct"] for r in oracle_run(run)] == [True, False, True, False]
    (run / "records.jsonl").write_text(json.dumps({**records[0], "image": "../outside.png"}) + "\n")
    with pytest.raises(RunError, match="outside the run directory"):
        oracle_run(run)


def test_a_generation_key_of_another_family_is_refused_before_anything_is_written(tmp_path):
    """`--gen` takes the model family's own sampling keys: Janus's cfg_scale on the Show-o is named, with the
    Show-o's keys, and no output directory is created."""
    out = tmp_path / "ev"
    cfg = EvidenceConfig(model=str(ROOT / "models" / "shapes-showo"), out=str(out), seeds=(0,),
                         generation={"cfg_scale": 2.0})
    with pytest.raises(EvidenceError, match=r"unknown generation key 'generation.cfg_scale'.*guidance_scale"):
        run_evidence(cfg)
    assert not out.exists()
    with pytest.raises(EvidenceError, match=r"guidance_scale must be >= 0"):
        run_evidence(EvidenceConfig(model=str(ROOT / "models" / "shapes-showo"), out=str(out),
                                    generation={"guidance_scale": -1}))
    assert not out.exists()
