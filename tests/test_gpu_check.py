"""``bash benchmarks/gpu_check.sh --cpu-smoke``: the device check's own code on tiny models on the CPU.

The GPU run (Janus-Pro-1B and Show-o 256-px shapes in bf16) cannot run here; the smoke run goes through every
section and every measurement of it (self-play generate + decode + judge at two batch sizes, the decoding step
against the bandwidth floor, LoRA SFT / DPO steps with a live and a precomputed reference, SFT with gradient
checkpointing) and must write every figure with a sane value.  The bytes a decoding step reads are recounted
here from the model's other parameters; a failing and a hanging section are reported and the run goes on.
"""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
from conftest import ROOT, run

pytestmark = pytest.mark.e2e

SCRIPT = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _numel(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = run(SCRIPT + ["--cpu-smoke"], env={"OUT": str(out)}, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout, json.loads((out / "gpu_check.json").read_text())


def _positive(*values) -> None:
    for v in values:
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, values


def test_smoke_run_writes_every_section(smoke):
    out, stdout, report = smoke
    assert report["mode"] == "cpu-smoke" and report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert list(report["sections"]) == ["device", "janus_selfplay", "janus_train", "showo_selfplay", "showo_train"]
    for name, entry in report["sections"].items():
        assert entry["ok"] and entry["result"]["done"], (name, entry.get("error"))
        assert 0 < entry["wall_s"] <= entry["box_s"] + 10
    assert report["wall_s"] <= report["budget_s"] + 10
    assert report["finished"] >= report["started"]
    text = (out / "gpu_check.txt").read_text()
    assert "all sections ok" in text and text.strip() in stdout  # the table is printed and written
    assert not list(out.glob(".*.json"))  # the sections' partial files are gone

    device = report["sections"]["device"]["result"]
    assert device["torch"] and device["cuda_available"] is False
    assert device["nominal_bandwidth_Bps"] is None and device["bandwidth_source"] == "unknown"  # no CUDA device
    assert 1e8 < device["copy_bandwidth_Bps"] < 1e13  # 0.1 GB/s .. 10 TB/s


@pytest.mark.parametrize("family,steps,codes", [("janus", 16, 16), ("showo", 4, 64)])
def test_selfplay_figures(smoke, tiny, family, steps, codes):
    result = smoke[2]["sections"][f"{family}_selfplay"]["result"]
    model = result["model"]
    assert model["image_tokens"] == codes and model["parameters"] > 0
    assert model["weight_bytes"] == 2 * model["parameters"]  # built in bfloat16
    assert [b["batch"] for b in result["batches"]] == [1, 2] and result["warmup"]["ok"]
    kv = []
    for b in result["batches"]:
        assert b["ok"], b
        _positive(b["generate_s"], b["decode_s"], b["judge_s"], b["step_s"], b["peak_memory_bytes"])
        assert b["total_s"] == pytest.approx(b["generate_s"] + b["decode_s"] + b["judge_s"])
        assert b["images_per_s"] == pytest.approx(b["batch"] / b["total_s"])
        assert b["generate_images_per_s"] == pytest.approx(b["batch"] / b["generate_s"])
        assert b["steps"] == steps and b["step_s"] == pytest.approx(b["generate_s"] / steps)
        assert 0.0 <= b["p_yes_mean"] <= 1.0
        bw = b["bandwidth"]
        assert bw["step_s"] == b["step_s"] and bw["copy_bandwidth_Bps"] > 0
        assert bw["floor_weights_s_copy"] == pytest.approx(bw["weight_bytes_per_step"] / bw["copy_bandwidth_Bps"])
        assert bw["step_over_floor_weights_copy"] == pytest.approx(b["step_s"] / bw["floor_weights_s_copy"])
        assert bw["weights_Bps_achieved"] == pytest.approx(bw["weight_bytes_per_step"] / b["step_s"])
        assert "floor_weights_s_nominal" not in bw  # no nominal bandwidth on a CPU
        kv.append(bw["kv_cache_bytes_per_step_mean"])
    if family == "janus":
        # a decoding step reads everything but the input embeddings, lm_head, the vision tower and its aligner,
        # the VQ and the code embeddings (recounted from the same sizes, here in float32: 2 bytes each in bf16)
        m = tiny[0].model
        skipped = _numel(m.language_model.embed_tokens, tiny[0].lm_head, m.vision_model, m.aligner, m.vqmodel,
                         m.generation_embeddings)
        assert bw["weight_bytes_per_step"] == 2 * (_numel(tiny[0]) - skipped)
        assert kv[0] > 0 and kv[1] == 2 * kv[0]  # the KV cache grows with the rows
    else:
        from unigap.models.showo.tiny import TinySpec, build_showo

        showo = build_showo(TinySpec())[0]
        skipped = _numel(showo.showo.model.embed_tokens, showo.vq_model)
        assert bw["weight_bytes_per_step"] == 2 * (_numel(showo) - skipped)
        assert kv == [0, 0]


@pytest.mark.parametrize("family", ["janus", "showo"])
def test_training_step_figures(smoke, tiny, family):
    from gpu_check import JANUS_LORA, LORA_RANK, SHOWO_LORA

    result = smoke[2]["sections"][f"{family}_train"]["result"]
    # LoRA on the intended linears only: rank x (in + out) each
    if family == "janus":
        model, pattern = tiny[0], JANUS_LORA
    else:
        from unigap.models.showo.tiny import TinySpec, build_showo

        model, pattern = build_showo(TinySpec())[0], SHOWO_LORA
    linears = [m for n, m in model.named_modules() if re.fullmatch(pattern, n)]
    assert linears and all(hasattr(m, "in_features") for m in linears)
    assert result["lora"]["trainable_parameters"] == sum(LORA_RANK * (m.in_features + m.out_features) for m in linears)
    assert [r["batch"] for r in result["sft"]] == [1, 2] and [r["batch"] for r in result["dpo"]] == [1, 2]
    for sft, dpo in zip(result["sft"], result["dpo"]):
        assert sft["ok"] and dpo["ok"], (sft, dpo)  # finite losses, and the LoRA B matrices moved
        _positive(sft["step_s"], sft["peak_memory_bytes"], dpo["step_s"], dpo["peak_memory_bytes"],
                  dpo["precomputed_ref_step_s"], dpo["precomputed_ref_peak_memory_bytes"], sft["tokens_per_row"])
        assert math.isfinite(sft["loss"]) and math.isfinite(dpo["loss"]) and dpo["pairs"] == dpo["batch"]
        assert sft["gradient_checkpointing"] is False
    ck = result["sft_gradient_checkpointing"]
    assert ck["ok"] and ck["gradient_checkpointing"] is True and ck["batch"] == 2
    _positive(ck["step_s"], ck["peak_memory_bytes"])


def test_a_failing_and_a_hanging_section_are_reported_and_the_run_goes_on(tmp_path):
    def check(hook: str) -> dict:
        out = tmp_path / hook.replace(":", "_")
        proc = run(SCRIPT + ["--cpu-smoke", "--sections", "janus_selfplay,device", "--box-s", "15"],
                   env={"OUT": str(out), "UNIGAP_GPU_CHECK_FAIL": hook}, timeout=200)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads((out / "gpu_check.json").read_text())
        assert report["sections"]["device"]["ok"]  # the next section ran
        assert "not ok:\n  janus_selfplay: " in proc.stdout
        return report["sections"]["janus_selfplay"]

    failed = check("janus_selfplay")
    assert not failed["ok"] and "exit status 1" in failed["error"] and "asked janus_selfplay to fail" in failed["error"]
    hung = check("janus_selfplay:hang")
    assert not hung["ok"] and hung["error"].startswith("timed out")
    assert hung["result"]["hook"] == "hanging"  # what the section had written before it was stopped
    assert 15 <= hung["wall_s"] < 40
