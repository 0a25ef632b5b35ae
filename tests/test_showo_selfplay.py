"""Show-o self-play through the real command line: the same determinism guarantees as Janus's.

Any batch size, two processes, and kill -9 then resume give byte-identical run directories.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_selfplay import N, PROMPTS, _write_prompts, assert_same_run, records, selfplay

from conftest import BIN, run

pytestmark = pytest.mark.e2e

STEPS = "steps=4"


@pytest.fixture(scope="module")
def showo_prompts(tmp_path_factory) -> Path:
    return _write_prompts(tmp_path_factory.mktemp("showo_prompts") / "prompts.jsonl")


@pytest.fixture(scope="module")
def showo_run(tiny_showo, showo_prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("showo_selfplay") / "reference"
    selfplay(tiny_showo, showo_prompts, out, "batch_size=4", STEPS, "progress=false")
    return out


def test_records_and_batch_sizes(showo_run, tiny_showo, showo_prompts, tmp_path):
    rows = records(showo_run)
    assert len(rows) == len(PROMPTS) * N and all(0 < r["p_yes"] < 1 for r in rows)
    assert len({(showo_run / r["codes"]).read_bytes() for r in rows}) == len(rows)  # every image differs
    for batch in (1, 7):
        other = tmp_path / f"bs{batch}"
        selfplay(tiny_showo, showo_prompts, other, f"batch_size={batch}", STEPS, "progress=false")
        assert_same_run(showo_run, other)
    guided_off = tmp_path / "w0"
    selfplay(tiny_showo, showo_prompts, guided_off, "batch_size=4", STEPS, "guidance_scale=0", "progress=false")
    assert (guided_off / rows[0]["codes"]).read_bytes() != (showo_run / rows[0]["codes"]).read_bytes()


def test_two_processes_equal_one_process(showo_run, tiny_showo, showo_prompts, tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29541", "-m", "unigap", "selfplay",
           f"model_name_or_path={tiny_showo}", f"prompts={showo_prompts}", f"output_dir={out}", f"num_candidates={N}",
           "judge_threshold=0.475", "seed=3", "batch_size=2", STEPS]
    proc = run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0/2" in proc.stderr
    assert_same_run(showo_run, out)


def test_kill_minus_nine_then_resume_equals_uninterrupted(showo_run, tiny_showo, showo_prompts, tmp_path):
    out = tmp_path / "run"
    killed = selfplay(tiny_showo, showo_prompts, out, "batch_size=4", STEPS, "progress=false",
                      env={"UNIGAP_KILL_AT_WRITE": "9"}, expect_ok=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "summary.json").exists()
    selfplay(tiny_showo, showo_prompts, out, "batch_size=5", STEPS, "progress=false")
    assert_same_run(showo_run, out)
