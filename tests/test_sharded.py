"""Sharded training (FSDP2; DeepSpeed ZeRO-2 and ZeRO-3) through the real, unmodified ``llamafactory-cli train``
on CPU, 2 processes (gloo).

accelerate 1.x enables FSDP on accelerators only: on CPU the YAML's ``fsdp`` keys silently become plain
DDP (tested below: unigap warns). ``tests/cpu_fsdp/sitecustomize.py`` (on PYTHONPATH, with
``UNIGAP_TEST_CPU_FSDP=1``) lets accelerate take its FSDP2 path on CPU; torch's ``fully_shard`` then
shards for real. ``UNIGAP_REPORT_SHARDING=1`` makes every rank write its parameter types and local
bytes (``unigap_sharding.rank{r}.json``), which is what proves the sharding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, base_config, lf_train, one_of_each
from test_curriculum_e2e import RECORD, _config, _jsonl, cur_data  # noqa: F401  (cur_data: a fixture)

pytestmark = pytest.mark.e2e

TWO = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "UNIGAP_REPORT_SHARDING": "1"}
CPU_FSDP = {**TWO, "UNIGAP_TEST_CPU_FSDP": "1", "PYTHONPATH": str(ROOT / "tests" / "cpu_fsdp")}
FSDP2 = {"fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_version": 2}}


def _reports(out: Path) -> list[dict]:
    return [json.loads((out / f"unigap_sharding.rank{r}.json").read_text()) for r in range(2)]


def _losses(out: Path) -> list[float]:
    """The logged losses and generation losses, in order."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [row[key] for row in history if "loss" in row for key in ("loss", "gen_loss")]


def _full(tiny) -> tuple[int, int]:
    model = tiny[0]
    return sum(p.numel() for p in model.parameters()), sum(p.numel() * p.element_size() for p in model.parameters())


def _assert_sharded(report: dict, numel: int | None = None) -> None:
    assert report["is_fsdp_enabled"] and report["fsdp_version"] == 2, report
    assert set(report["by_type"]) == {"DTensor"}, report["by_type"]
    if numel is not None:
        assert report["by_type"]["DTensor"]["global_numel"] == numel


def _assert_halves(reports: list[dict], key: str = "local_bytes") -> None:
    total = sum(r[key] for r in reports)
    for r in reports:  # dim-0 shards: one rank may hold a row more of a tensor
        assert abs(r[key] - total / 2) <= 0.01 * total, (key, [x[key] for x in reports])


def _sft(tmp_path, tiny_model, example_data, name, env, finetuning_type="full", **overrides):
    out = tmp_path / name
    cfg = base_config(tiny_model, example_data, "unigap_gen_sft", out, finetuning_type=finetuning_type,
                      per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3, **overrides)
    if finetuning_type == "full":
        cfg.pop("lora_target"), cfg.pop("lora_rank")
    (tmp_path / name).mkdir()
    return out, lf_train(cfg, tmp_path / name, env=env, timeout=300)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_model, example_data):
    """Plain-DDP generation SFT runs (full, lora), each run once on first use: what the sharded runs must equal."""
    root, done = tmp_path_factory.mktemp("ddp_runs"), {}

    def get(finetuning_type: str) -> Path:
        if finetuning_type not in done:
            done[finetuning_type] = _sft(root, tiny_model, example_data, finetuning_type, TWO, finetuning_type)[0]
        return done[finetuning_type]

    return get


@pytest.fixture(scope="module", params=["full", "lora"])
def fsdp2_vs_ddp(request, tmp_path_factory, tiny_model, example_data, ddp_runs):
    """The same generation SFT under FSDP2 and as plain DDP: (finetuning type, FSDP2 output, DDP output)."""
    root = tmp_path_factory.mktemp(f"fsdp2_{request.param}")
    fsdp, _ = _sft(root, tiny_model, example_data, "fsdp2", CPU_FSDP, request.param, **FSDP2)
    return request.param, fsdp, ddp_runs(request.param)


def test_fsdp2_gen_sft_really_shards_and_trains_like_ddp(tiny, fsdp2_vs_ddp):
    finetuning_type, out, ddp = fsdp2_vs_ddp
    numel, nbytes = _full(tiny)
    reports = _reports(out)
    for r in reports:
        _assert_sharded(r, numel if finetuning_type == "full" else None)
        assert r["checksum_end"] != r["checksum_begin"], r  # this rank's trainable shard was trained
    total = sum(r["local_bytes"] for r in reports)
    if finetuning_type == "full":
        assert total == nbytes  # the shards add up to the whole model, nothing replicated
    else:  # the base model plus its LoRA matrices, all sharded
        assert nbytes < total < 1.1 * nbytes
    _assert_halves(reports)
    _assert_halves(reports, "trainable_local_bytes")
    # the same run as plain DDP: the whole model on each rank, and the same losses
    for r in _reports(ddp):
        assert set(r["by_type"]) == {"Parameter"} and r["local_bytes"] == total
    assert _losses(out) == pytest.approx(_losses(ddp), rel=1e-4, abs=1e-5)


def _trained(out: Path) -> dict[str, list[float]]:
    """Each trainable parameter's float64 sum and sum of squares at the end of training, added over the ranks'
    shards (``checksums_end`` of the sharding reports)."""
    total: dict[str, list[float]] = {}
    for r in _reports(out):
        for name, (s, q) in r["checksums_end"].items():
            acc = total.setdefault(name, [0.0, 0.0])
            acc[0] += s
            acc[1] += q
    return total


def _sums(t) -> list[float]:
    t = t.detach().double()
    return [float(t.sum()), float((t * t).sum())]


def _assert_saved_full(out: Path, tiny) -> tuple:
    """``out`` holds a plain transformers checkpoint that the family loader loads, whose every trainable tensor is
    the trained one (``_trained``) and every frozen one the initial one; returns (family adapter, its parameters)."""
    import torch
    from unigap.loading import load_unified

    trained, initial = _trained(out), dict(tiny[0].named_parameters())
    assert trained and (out / "model.safetensors").exists() and not list(out.glob("pytorch_model_fsdp*"))
    model = load_unified(str(out), device="cpu", dtype="float32")
    saved = dict(model.model.named_parameters())
    assert saved.keys() == initial.keys()
    for name, p in saved.items():
        if name in trained:
            assert _sums(p) == pytest.approx(trained[name], rel=1e-9, abs=1e-9), name
        else:  # frozen (the vision tower, the VQ, ...)
            assert torch.equal(p, initial[name]), name
    assert any(not torch.equal(saved[n], initial[n]) for n in trained)
    return model, saved


def test_fsdp2_saves_the_trained_weights(tiny, tiny_model, fsdp2_vs_ddp):
    """FSDP2's default (sharded) state dict makes the host's ``save_model`` write no weights; unigap's trainers
    gather the full state dict and save it as any run's.  Every trainable tensor in the file is the trained one
    (its checksum equals the ranks' checksums of their trained shards added up), every frozen one the initial
    one; the family loader loads it and it draws an image; the DDP run saved the same weights."""
    import torch
    from unigap.loading import load_unified

    finetuning_type, out, ddp = fsdp2_vs_ddp
    trained = _trained(out)
    assert trained
    initial = dict(tiny[0].named_parameters())
    if finetuning_type == "full":
        model, saved = _assert_saved_full(out, tiny)
        reference = dict(load_unified(str(ddp), device="cpu", dtype="float32").model.named_parameters())
    else:
        from safetensors.torch import load_file

        saved = load_file(out / "adapter_model.safetensors")
        names = {name.replace(".default.", "."): name for name in trained}  # the file drops the adapter's name
        assert saved.keys() == names.keys()
        for key, tensor in saved.items():
            assert _sums(tensor) == pytest.approx(trained[names[key]], rel=1e-9, abs=1e-9), key
        reference = load_file(ddp / "adapter_model.safetensors")
        model = load_unified(str(tiny_model), adapter_name_or_path=str(out), device="cpu", dtype="float32")
        merged = dict(model.model.named_parameters())
        assert any(not torch.equal(merged[n], initial[n]) for n in initial if "language_model" in n)
    assert reference.keys() == saved.keys()
    for name, tensor in reference.items():
        assert torch.allclose(saved[name], tensor, rtol=1e-4, atol=1e-6), name
    codes = model.generate(["a red square"], seeds=[0])
    assert codes.shape == (1, model.spec.num_image_tokens)


def test_fsdp2_full_state_dict_saves_through_the_host(tmp_path, tiny, tiny_model, example_data):
    """``FSDP_STATE_DICT_TYPE=FULL_STATE_DICT`` (what an accelerate config's ``fsdp_state_dict_type:
    FULL_STATE_DICT`` sets; the YAML's ``fsdp_config`` has no key for it): the host gathers and saves the full
    weights itself, and unigap does not save them a second time."""
    out, proc = _sft(tmp_path, tiny_model, example_data, "full_sd", {**CPU_FSDP, "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"},
                     **FSDP2)
    for r in _reports(out):
        _assert_sharded(r)
    _assert_saved_full(out, tiny)
    assert "the full weights were gathered" not in proc.stdout + proc.stderr


def test_fsdp_keys_on_cpu_without_the_engine_are_reported_as_ddp(tmp_path, tiny, tiny_model, example_data):
    """What a CPU user gets from accelerate: no sharding; unigap says so instead of staying silent."""
    _, nbytes = _full(tiny)
    out, proc = _sft(tmp_path, tiny_model, example_data, "fallback", TWO, **FSDP2)
    assert "FSDP was asked for" in proc.stdout + proc.stderr
    for r in _reports(out):
        assert not r["is_fsdp_enabled"] and set(r["by_type"]) == {"Parameter"} and r["local_bytes"] == nbytes


@pytest.mark.parametrize("precompute", [False, True], ids=["frozen_reference", "precomputed_reference"])
def test_fsdp2_dpo_shards_policy_and_reference_and_keeps_the_reference(tmp_path, tiny, tiny_model, example_data,
                                                                       precompute):
    """Full DPO under FSDP2: policy and frozen reference both sharded, the reference verified unchanged; with
    ``gen_precompute_ref`` the reference's shards are freed once its log-probs are computed."""
    numel, nbytes = _full(tiny)
    out = tmp_path / "out"
    cfg = base_config(tiny_model, example_data, "unigap_gen_dpo", out, stage="dpo", finetuning_type="full",
                      pref_beta=0.1, per_device_train_batch_size=2, max_steps=3, gen_precompute_ref=precompute,
                      **FSDP2)
    cfg.pop("lora_target"), cfg.pop("lora_rank")
    lf_train(cfg, tmp_path, env=CPU_FSDP, timeout=300)
    reports = _reports(out)
    for r in reports:
        _assert_sharded(r, numel)
        assert r["checksum_end"] != r["checksum_begin"]
    assert sum(r["local_bytes"] for r in reports) == nbytes
    _assert_halves(reports)
    check = json.loads((out / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["tensors"] > 0, check
    _assert_reference(reports, check, precompute, "DTensor", nbytes)
    _assert_saved_full(out, tiny)  # the trained policy, saved whole (FSDP2's default sharded state dict saves none)


def _assert_reference(reports: list[dict], check: dict, precompute: bool, kind: str, nbytes: int,
                      max_alive: int = 0) -> None:
    """The DPO reference: sharded like the policy (half the bytes on each rank) while it lives; with
    ``gen_precompute_ref``, gone before training begins and rank 0's shard given back (all but ``max_alive``
    bytes)."""
    if precompute:
        assert check["precomputed_pairs"] > 0 and check["reference_bytes_alive"] <= max_alive, check
        assert 0.45 * nbytes < check["released_bytes"] < 0.6 * nbytes, (check, nbytes)  # rank 0's shard
        assert all("reference" not in r for r in reports)
        return
    assert "released_bytes" not in check
    for r in reports:
        assert set(r["reference"]["by_type"]) == {kind}, r["reference"]
    _assert_halves([r["reference"] for r in reports])


def _replay(tmp_path, tiny_model, cur_data, name, env, finetuning_type="full", learning_rate=1e-4,  # noqa: F811
            **extra) -> Path:
    out = tmp_path / name
    (tmp_path / name).mkdir()
    lf_train(
        _config(tiny_model, cur_data, out, finetuning_type=finetuning_type, num_train_epochs=2, save_strategy="no",
                curriculum_difficulty="acceptance", curriculum_pacing="step", replay_judge_threshold=0.0,
                learning_rate=learning_rate, **extra),
        tmp_path / name, env={**RECORD, **env}, timeout=400,
    )
    return out


EPOCH = "unigap_replay/epoch_1"


def _candidates(out: Path) -> list[tuple]:
    """Every replayed candidate: prompt, image, its drawn codes, P(yes)."""
    return [(c["prompt_id"], c["image"], np.load(out / EPOCH / c["image"].replace(".png", ".codes.npy")).tolist(),
             c["p_yes"]) for c in _jsonl(out / EPOCH / "candidates.jsonl")]


def test_fsdp2_replay_draws_the_same_rows_as_ddp(tmp_path, tiny_model, cur_data):  # noqa: F811
    """C-SFT replay under FSDP2 gathers whole parameters for generation: the same rows as under DDP."""
    runs = {name: _replay(tmp_path, tiny_model, cur_data, name, env, **extra)
            for name, env, extra in (("ddp", TWO, {}), ("fsdp2", CPU_FSDP, FSDP2))}
    for r in _reports(runs["fsdp2"]):
        _assert_sharded(r)
    ddp, fsdp = ((runs[n] / EPOCH / "data.jsonl").read_text().replace(str(runs[n]), "OUT") for n in ("ddp", "fsdp2"))
    assert ddp.strip() and ddp == fsdp
    assert _candidates(runs["ddp"]) and _candidates(runs["ddp"]) == _candidates(runs["fsdp2"])
    # and training goes on after the replay as under DDP (FSDP2's state after the gathered generation is clean)
    assert len(_losses(runs["fsdp2"])) == 2 * 4
    assert _losses(runs["fsdp2"]) == pytest.approx(_losses(runs["ddp"]), rel=1e-4, abs=1e-5)


# DeepSpeed (a test dependency: setup.cfg's [test] extra) runs ZeRO on CPU through its CPU accelerator (gloo). The
# runs use the shipped configs, yaml_examples/deepspeed/ds_z{2,3}_config.json, as a user's YAML would.
DS_DIR = ROOT / "yaml_examples" / "deepspeed"
Z2, Z3 = str(DS_DIR / "ds_z2_config.json"), str(DS_DIR / "ds_z3_config.json")


def _assert_zero3(reports: list[dict], numel: int, nbytes: int) -> None:
    """Every parameter a ZeRO-3 partitioned one and each rank holding about half the bytes (its partition, padded to
    the world size, plus the parameters under ``stage3_param_persistence_threshold``, which every rank keeps)."""
    for r in reports:
        assert r["is_deepspeed_enabled"] and r["zero_stage"] == 3 and set(r["by_type"]) == {"ZeRO3Parameter"}, r
        assert r["by_type"]["ZeRO3Parameter"]["global_numel"] == numel
        assert r["checksum_end"] != r["checksum_begin"]
        assert r["local_bytes"] < 0.55 * nbytes, (r["local_bytes"], nbytes)  # a partition, not the whole model


def test_zero2_partitions_the_optimizer_state_and_trains_like_ddp(tmp_path, tiny, tiny_model, example_data, ddp_runs):
    """ZeRO-2 (the shipped ds_z2_config.json): every rank keeps whole parameters but only half of Adam's state;
    the losses and the saved weights equal plain DDP's."""
    import torch
    from unigap.loading import load_unified

    _, nbytes = _full(tiny)
    out, _ = _sft(tmp_path, tiny_model, example_data, "zero2", TWO, deepspeed=Z2)
    ddp = ddp_runs("full")
    reports, plain = _reports(out), _reports(ddp)
    for r in reports:
        assert r["is_deepspeed_enabled"] and r["zero_stage"] == 2, r
        assert set(r["by_type"]) == {"Parameter"} and r["local_bytes"] == nbytes  # parameters are not partitioned
        assert r["checksum_end"] != r["checksum_begin"]
    ddp_state = plain[0]["optimizer_local_bytes"]
    assert ddp_state == 2 * plain[0]["trainable_local_bytes"] > 0  # Adam: two moments of every trainable value
    assert all(r["optimizer_local_bytes"] == ddp_state for r in plain)
    _assert_halves(reports, "optimizer_local_bytes")
    assert sum(r["optimizer_local_bytes"] for r in reports) < 1.01 * ddp_state  # each rank half of it
    assert _losses(out) == pytest.approx(_losses(ddp), rel=1e-4, abs=1e-5)
    saved, reference = (dict(load_unified(str(d), device="cpu", dtype="float32").model.named_parameters())
                        for d in (out, ddp))
    initial = dict(tiny[0].named_parameters())
    assert saved.keys() == reference.keys() == initial.keys()
    for name, tensor in reference.items():
        assert torch.allclose(saved[name], tensor, rtol=1e-4, atol=1e-6), name
    assert any(not torch.equal(saved[n], initial[n]) for n in initial if "language_model" in n)


def _engine(engine: str) -> tuple[dict, dict]:
    """The YAML keys and the environment of a 2-rank run under ``zero3`` (the shipped config) or ``fsdp2``."""
    return ({"deepspeed": Z3}, TWO) if engine == "zero3" else (FSDP2, CPU_FSDP)


def _assert_saved_adapter(out: Path) -> dict:
    """``out`` holds the LoRA adapter alone, every tensor of it the trained one (its checksum equals the ranks'
    checksums of their trained shards added up); returns it."""
    from safetensors.torch import load_file

    trained = _trained(out)
    saved = load_file(out / "adapter_model.safetensors")
    names = {name.replace(".default.", "."): name for name in trained}  # the file drops the adapter's name
    assert saved.keys() == names.keys() and all("lora_" in k for k in saved)
    for key, tensor in saved.items():
        assert _sums(tensor) == pytest.approx(trained[names[key]], rel=1e-9, abs=1e-9), key
    return saved


def test_zero3_lora_partitions_the_model_and_saves_the_trained_adapter(tmp_path, tiny, tiny_model, example_data,
                                                                       ddp_runs):
    """LoRA generation SFT under ZeRO-3: base and adapter partitioned, the adapter's shards trained, the same
    losses as DDP, and the saved adapter is the trained one (checksums of the ranks' partitions) and loads."""
    import torch
    from safetensors.torch import load_file
    from unigap.loading import load_unified

    numel, nbytes = _full(tiny)
    out, _ = _sft(tmp_path, tiny_model, example_data, "zero3_lora", TWO, "lora", deepspeed=Z3)
    reports = _reports(out)
    lora_numel = reports[0]["by_type"]["ZeRO3Parameter"]["global_numel"] - numel
    assert lora_numel > 0
    _assert_zero3(reports, numel + lora_numel, nbytes)
    ddp = ddp_runs("lora")
    assert _losses(out) == pytest.approx(_losses(ddp), rel=1e-4, abs=1e-5)
    saved = _assert_saved_adapter(out)
    reference = load_file(ddp / "adapter_model.safetensors")
    for key, tensor in reference.items():
        assert torch.allclose(saved[key], tensor, rtol=1e-4, atol=1e-6), key
    model = load_unified(str(tiny_model), adapter_name_or_path=str(out), device="cpu", dtype="float32")
    merged, initial = dict(model.model.named_parameters()), dict(tiny[0].named_parameters())
    assert any(not torch.equal(merged[n], initial[n]) for n in initial if "language_model" in n)


def test_zero3_shards_and_replay_draws_the_same_images_as_ddp(tmp_path, tiny, tiny_model, cur_data):  # noqa: F811
    """C-SFT replay under ZeRO-3 gathers whole parameters to draw: the same codes as DDP; the host then saves the
    full trained weights (``stage3_gather_16bit_weights_on_model_save`` in the shipped config)."""
    numel, nbytes = _full(tiny)
    z3 = _replay(tmp_path, tiny_model, cur_data, "zero3", TWO, deepspeed=Z3)
    _assert_zero3(_reports(z3), numel, nbytes)
    ddp = _replay(tmp_path, tiny_model, cur_data, "ddp", TWO)
    a, b = _candidates(ddp), _candidates(z3)
    assert a and [x[:3] for x in a] == [x[:3] for x in b]  # the same drawn codes
    assert [x[3] for x in a] == pytest.approx([x[3] for x in b], abs=1e-5)  # P(yes) to float32 rounding
    assert _losses(z3) == pytest.approx(_losses(ddp), rel=1e-4, abs=1e-5)
    _assert_saved_full(z3, tiny)


@pytest.mark.parametrize("precompute", [False, True], ids=["frozen_reference", "precomputed_reference"])
def test_zero3_dpo_partitions_policy_and_reference_and_keeps_the_reference(tmp_path, tiny, tiny_model, example_data,
                                                                           precompute):
    """Full DPO under ZeRO-3: policy and frozen reference both partitioned, the reference verified unchanged over
    each rank's partition; with ``gen_precompute_ref`` the reference's partitions are freed after its log-probs."""
    numel, nbytes = _full(tiny)
    out = tmp_path / "out"
    cfg = base_config(tiny_model, example_data, "unigap_gen_dpo", out, stage="dpo", finetuning_type="full",
                      pref_beta=0.1, per_device_train_batch_size=2, max_steps=3, deepspeed=Z3,
                      gen_precompute_ref=precompute)
    cfg.pop("lora_target"), cfg.pop("lora_rank")
    lf_train(cfg, tmp_path, env=TWO, timeout=300)
    reports = _reports(out)
    _assert_zero3(reports, numel, nbytes)
    check = json.loads((out / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["tensors"] > 0, check  # checksums over each rank's partition
    # ZeRO-3 never partitions buffers; one small one (at most 160 bytes: position ids or rotary frequencies) stays
    # held by something other than the module after the release, every partition is given back
    _assert_reference(reports, check, precompute, "ZeRO3Parameter", nbytes, max_alive=160)
    _assert_saved_full(out, tiny)


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_sharded_with_understanding_on_one_rank_and_generation_on_the_other(tmp_path, tiny, tiny_model, example_data,
                                                                           engine):
    """Mixed data under ZeRO-3 and FSDP2: every step one rank's row is an image to understand and the other's an
    image to generate.  ZeRO-3 gathers each module's partitions as it runs (FSDP2 each wrapped block's), a
    collective, so both ranks must run the same modules in the same order whatever their rows (before, ZeRO-3
    crashed on a collective of mismatched sizes); training must neither hang nor crash, and log both heads."""
    import subprocess

    root = one_of_each(example_data, tmp_path / "data")
    out = tmp_path / "out"
    extra, env = _engine(engine)
    cfg = base_config(tiny_model, root, "mix", out, finetuning_type="full", per_device_train_batch_size=1,
                      num_train_epochs=3, **extra)
    cfg.pop("lora_target"), cfg.pop("lora_rank")
    try:
        lf_train(cfg, tmp_path, env=env, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{engine} training hung: the ranks gathered different modules")
    numel, nbytes = _full(tiny)
    if engine == "zero3":
        _assert_zero3(_reports(out), numel, nbytes)
    else:
        for r in _reports(out):
            _assert_sharded(r, numel)
    history = [r for r in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in r]
    assert len(history) == 3 and all("gen_loss" in r and "text_loss" in r for r in history), history


def test_the_readme_zero3_command_trains_the_shipped_example(tmp_path):
    """The README's command line: the shipped full-SFT example (the embedded model, generation and understanding
    rows mixed) under the shipped ZeRO-3 config on 2 ranks, the YAML untouched but for output_dir and max_steps."""
    from conftest import BIN, run
    from unigap.loading import load_unified

    out = tmp_path / "out"
    proc = run([str(BIN / "llamafactory-cli"), "train", "yaml_examples/gap_sft_full.yaml",
                "deepspeed=yaml_examples/deepspeed/ds_z3_config.json", f"output_dir={out}", "max_steps=3"],
               cwd=ROOT, env=TWO, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = _reports(out)
    for r in reports:
        assert r["zero_stage"] == 3 and set(r["by_type"]) == {"ZeRO3Parameter"}, r
        assert r["checksum_end"] != r["checksum_begin"]
    _assert_halves(reports)
    history = [r for r in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in r]
    assert history and all("gen_loss" in r and "text_loss" in r for r in history), history
    model = load_unified(str(out), device="cpu", dtype="float32")
    assert model.generate(["a red square"], seeds=[0]).shape == (1, model.spec.num_image_tokens)


@pytest.fixture(scope="module")
def ddp_lora_replay(tmp_path_factory, tiny_model, cur_data):  # noqa: F811
    return _replay(tmp_path_factory.mktemp("lora_replay"), tiny_model, cur_data, "ddp", TWO, "lora", LORA_LR)


#: the LoRA replay runs' learning rate: high enough that the trained adapter matters to the replay (measured against
#: an untrained adapter under DDP: 7 of the 10 replayed candidates drew other codes, and every P(yes) moved by
#: 0.0010 to 0.0086, median 0.0037, far beyond the 1e-5 compared), so drawing without it would fail the test
LORA_LR = 1e-2


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_lora_replay_under_sharding_draws_the_same_images_as_ddp(tmp_path, tiny_model, cur_data, ddp_lora_replay,  # noqa: F811
                                                                 engine):
    """C-SFT replay with LoRA under ZeRO-3 and FSDP2: the gathered weights include the adapter being trained, so the
    replayed candidates (codes and P(yes)) and the losses after the replay are DDP's."""
    extra, env = _engine(engine)
    sharded = _replay(tmp_path, tiny_model, cur_data, engine, env, "lora", LORA_LR, **extra)
    for r in _reports(sharded):
        assert set(r["by_type"]) == ({"ZeRO3Parameter"} if engine == "zero3" else {"DTensor"}), r["by_type"]
        assert r["checksum_end"] != r["checksum_begin"]
    a, b = _candidates(ddp_lora_replay), _candidates(sharded)
    assert a and [x[:3] for x in a] == [x[:3] for x in b]  # the same drawn codes
    assert [x[3] for x in a] == pytest.approx([x[3] for x in b], abs=1e-5)
    assert _losses(sharded) == pytest.approx(_losses(ddp_lora_replay), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_lora_dpo_under_sharding_keeps_the_base_and_saves_the_trained_adapter(tmp_path, tiny, tiny_model, example_data,
                                                                             engine):
    """LoRA DPO under ZeRO-3 and FSDP2: the reference is the base weights with the adapter disabled (no copy, so no
    second model on any rank); the base is verified unchanged over each rank's shard, every rank's adapter shard is
    trained, and the saved adapter is the trained one."""
    extra, env = _engine(engine)
    numel, nbytes = _full(tiny)
    out = tmp_path / "out"
    cfg = base_config(tiny_model, example_data, "unigap_gen_dpo", out, stage="dpo", pref_beta=0.1,
                      per_device_train_batch_size=2, max_steps=3, **extra)
    lf_train(cfg, tmp_path, env=env, timeout=300)
    reports = _reports(out)
    for r in reports:
        assert set(r["by_type"]) == ({"ZeRO3Parameter"} if engine == "zero3" else {"DTensor"}), r["by_type"]
        assert "reference" not in r and r["checksum_end"] != r["checksum_begin"]
        assert r["local_bytes"] < 0.55 * nbytes
    check = json.loads((out / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["tensors"] > 0 and "adapter disabled" in check["reference"], check
    _assert_saved_adapter(out)
