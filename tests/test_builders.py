"""``unigap build sft|dpo`` and ``unigap encode``: selection, host format, merge, atomicity, bad input.

The run comes from the real tiny model (tests/runfixture.py: generate -> decode -> judge),
with P(yes) set by hand so the expected rows and pairs are known exactly (the
tables below are worked out by hand, not by the code under test).  Two tests
train on the built datasets with the real ``llamafactory-cli``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, ENV, base_config, lf_train
from runfixture import make_run, write_synthetic_run

# P(yes) per prompt and candidate; threshold 0.5
P = [
    [0.9, 0.2, 0.7, 0.1],  # easy:   accepted 0, 2
    [0.1, 0.3, 0.45, 0.2],  # easy:   none accepted -> discard pool
    [0.55, 0.8, 0.6, 0.7],  # medium: all accepted -> no default pair
    [0.3, 0.95, 0.05, 0.6],  # medium: accepted 1, 3
    [0.5, 0.49, 0.51, 0.45],  # hard:   accepted 0, 2, small margins
    [0.2, 0.6, 0.35, 0.35],  # (none): accepted 1, tie 2 / 3
]
PROMPTS = [
    {"prompt": "a red square", "difficulty": "easy", "category": "colour"},
    {"prompt": "a blue circle", "difficulty": "easy", "category": "colour"},
    {"prompt": "a green square", "difficulty": "medium", "category": "shape"},
    {"prompt": "a yellow circle", "difficulty": "medium", "category": "shape"},
    {"prompt": "two red squares", "difficulty": "hard", "category": "count"},
    {"prompt": "a circle left of a square", "difficulty": None, "category": None},
]


def _main(*argv: str) -> tuple[int, str, str]:
    """``unigap ...`` in-process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from unigap.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def adapter(tiny_model):
    from transformers import AutoTokenizer, JanusForConditionalGeneration
    from unigap.models.janus import JanusAdapter

    model = JanusForConditionalGeneration.from_pretrained(tiny_model).eval()
    return JanusAdapter(model, AutoTokenizer.from_pretrained(tiny_model))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model, adapter) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    return make_run(tiny_model, out, PROMPTS, num_candidates=4, p_yes=lambda i, k: P[i][k], adapter=adapter)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cand(rel: str) -> tuple[int, int]:
    """'NAME/images/000003-001.png' -> (3, 1)."""
    i, k = Path(rel).stem.split("-")
    return int(i), int(k)


def _check_files(ds: Path, run: Path, rels: list[str], adapter) -> None:
    """Every image: inside the dataset dir, hard-linked from the run, the exact codes, readable by the host check."""
    from unigap.codes import load_gen_target

    for rel in rels:
        dst = (ds / rel).resolve()
        assert ds.resolve() in dst.parents
        i, k = _cand(rel)
        src = run / f"images/{i:06d}-{k:03d}.png"
        assert os.path.samefile(dst, src)
        codes = load_gen_target(str(dst), adapter.spec)
        assert codes.tolist() == np.load(run / f"images/{i:06d}-{k:03d}.codes.npy").tolist()


def _sft_rows(ds: Path, name: str) -> list[tuple[str, tuple[int, int]]]:
    return [(r["messages"][0]["content"], _cand(r["images"][0])) for r in _rows(ds / name / "data.jsonl")]


# ---------------------------------------------------------------------- SFT
SFT_CASES = {
    (): [(0, 0), (0, 2), (2, 1), (2, 3), (2, 2), (2, 0), (3, 1), (3, 3), (4, 2), (4, 0), (5, 1)],
    ("--best-of-n",): [(0, 0), (2, 1), (3, 1), (4, 2), (5, 1)],
    ("--max-per-prompt", "2"): [(0, 0), (0, 2), (2, 1), (2, 3), (3, 1), (3, 3), (4, 2), (4, 0), (5, 1)],
    ("--threshold", "0.65"): [(0, 0), (0, 2), (2, 1), (2, 3), (3, 1)],
}


@pytest.mark.parametrize("options", list(SFT_CASES), ids=lambda o: " ".join(o) or "default")
def test_sft_selects_accepted_candidates_and_pools_the_rest(tmp_path, run_dir, adapter, options):
    ds = tmp_path / "ds"
    code, out, err = _main("build", "sft", run_dir, "--out", ds, "--name", "gap", *options)
    assert code == 0, err
    rows = _sft_rows(ds, "gap")
    assert [c for _, c in rows] == SFT_CASES[options]
    assert all(text == PROMPTS[i]["prompt"] for text, (i, _) in rows)
    _check_files(ds, run_dir, [r["images"][0] for r in _rows(ds / "gap/data.jsonl")], adapter)

    threshold = float(options[1]) if options[:1] == ("--threshold",) else 0.5
    discarded = [i for i, ps in enumerate(P) if max(ps) < threshold]
    pool = _rows(ds / "gap/discard_pool.jsonl")
    assert [(r["prompt_index"], r["prompt"], r["difficulty"]) for r in pool] == [
        (i, PROMPTS[i]["prompt"], PROMPTS[i]["difficulty"]) for i in discarded
    ]
    assert [r["best_p_yes"] for r in pool] == [max(P[i]) for i in discarded]
    assert all(r["num_candidates"] == 4 for r in pool)

    # counts per difficulty, recomputed here
    manifest = json.loads((ds / "gap/manifest.json").read_text())
    expected: dict[str, dict[str, int]] = {}
    for i, prompt in enumerate(PROMPTS):
        d = expected.setdefault(prompt["difficulty"] or "unspecified", {"prompts": 0, "rows": 0, "discarded": 0})
        d["prompts"] += 1
        d["rows"] += sum(1 for j, _ in SFT_CASES[options] if j == i)
        d["discarded"] += int(i in discarded)
    got = {k: {key: v[key] for key in ("prompts", "rows", "discarded")} for k, v in manifest["counts"]["by_difficulty"].items()}
    assert got == expected
    source = manifest["sources"][0]
    meta = json.loads((run_dir / "run.json").read_text())
    assert source["model_fingerprint"] == meta["model_fingerprint"]
    assert source["config_fingerprint"] == meta["config_fingerprint"]
    assert source["records"] == 24 and len(source["records_sha256"]) == 64
    assert manifest["kind"] == "sft" and manifest["options"]["threshold"] == (None if threshold == 0.5 else threshold)
    info = json.loads((ds / "dataset_info.json").read_text())
    assert info == {"gap": {**info["gap"], "file_name": "gap/data.jsonl", "formatting": "sharegpt"}}
    assert "ranking" not in info["gap"]
    # the printed report
    assert f"{len(SFT_CASES[options])} generation rows from 6 prompts" in out
    assert f"{len(discarded)} prompts with no accepted candidate" in out and "easy: prompts 2" in out


def test_sft_with_und_rows_are_the_self_judgments(tmp_path, run_dir, adapter):
    ds = tmp_path / "ds"
    code, out, err = _main("build", "sft", run_dir, "--out", ds, "--name", "gap", "--with-und")
    assert code == 0, err
    und = _rows(ds / "gap/und.jsonl")
    assert len(und) == 24 and "24 understanding rows (gap_und)" in out
    for row, (i, k) in zip(und, [(i, k) for i in range(6) for k in range(4)]):
        assert _cand(row["images"][0]) == (i, k)
        assert row["messages"][0]["content"] == f"<image>\nDoes this image show {PROMPTS[i]['prompt']}?"
        assert row["messages"][1]["content"] == ("Yes" if P[i][k] >= 0.5 else "No")
    _check_files(ds, run_dir, [r["images"][0] for r in und], adapter)
    info = json.loads((ds / "dataset_info.json").read_text())
    assert info["gap_und"]["file_name"] == "gap/und.jsonl" and info["gap"]["file_name"] == "gap/data.jsonl"


# ---------------------------------------------------------------------- DPO
DPO_CASES = {
    (): [(0, 0, 3), (3, 1, 2), (4, 2, 3), (5, 1, 0)],
    ("--min-margin", "0.1"): [(0, 0, 3), (3, 1, 2), (5, 1, 0)],
    ("--pairs", "2"): [(0, 0, 3), (0, 2, 1), (3, 1, 2), (3, 3, 0), (4, 2, 3), (4, 0, 1), (5, 1, 0)],
    ("--all-pairs", "--pairs", "3"): [
        (0, 0, 3), (0, 0, 1), (0, 2, 3),
        (3, 1, 2), (3, 1, 0), (3, 3, 2),
        (4, 2, 3), (4, 0, 3), (4, 2, 1),
        (5, 1, 0), (5, 1, 2), (5, 1, 3),
    ],
    ("--any-outcome",): [(0, 0, 3), (1, 2, 0), (2, 1, 0), (3, 1, 2), (4, 2, 3), (5, 1, 0)],
}


@pytest.mark.parametrize("options", list(DPO_CASES), ids=lambda o: " ".join(o) or "default")
def test_dpo_pairs_most_yes_against_most_no(tmp_path, run_dir, adapter, options):
    ds = tmp_path / "ds"
    code, out, err = _main("build", "dpo", run_dir, "--out", ds, "--name", "pairs", *options)
    assert code == 0, err
    rows = _rows(ds / "pairs/data.jsonl")
    got = []
    for row in rows:
        (c_i, c), (r_i, r) = (_cand(x) for x in row["images"])
        assert c_i == r_i and row["messages"] == [{"role": "user", "content": PROMPTS[c_i]["prompt"]}]
        assert row["chosen"] == row["rejected"] == {"role": "assistant", "content": "<image>"}
        assert P[c_i][c] > P[c_i][r]
        got.append((c_i, c, r))
    assert got == DPO_CASES[options]
    _check_files(ds, run_dir, [x for row in rows for x in row["images"]], adapter)
    info = json.loads((ds / "dataset_info.json").read_text())
    assert info["pairs"]["ranking"] is True and info["pairs"]["file_name"] == "pairs/data.jsonl"
    assert info["pairs"]["columns"]["chosen"] == "chosen"
    paired = {i for i, _, _ in DPO_CASES[options]}
    totals = json.loads((ds / "pairs/manifest.json").read_text())["counts"]["total"]
    assert totals["pairs"] == len(got) and totals["unpaired"] == 6 - len(paired) and totals["discarded"] == 1
    assert f"{len(got)} pairs from 6 prompts" in out and f"{6 - len(paired)} prompts without a pair" in out


# ---------------------------------------------------------------------- dataset_info.json merge
def test_dataset_info_merge_never_touches_other_entries(tmp_path, run_dir):
    ds = tmp_path / "ds"
    ds.mkdir()
    others = {
        "mine": {"file_name": "mine.json", "formatting": "alpaca", "columns": {"prompt": "q"}, "custom": [1, 2]},
        "gap2": {"hf_hub_url": "someone/data", "ranking": True},
    }
    (ds / "dataset_info.json").write_text(json.dumps(others))
    (ds / "mine.json").write_text("[]")

    assert _main("build", "sft", run_dir, "--out", ds, "--name", "gap", "--with-und")[0] == 0
    info = json.loads((ds / "dataset_info.json").read_text())
    assert {k: info[k] for k in others} == others and set(info) == {"mine", "gap2", "gap", "gap_und"}
    before = (ds / "dataset_info.json").read_bytes()
    folder_before = (ds / "gap/data.jsonl").read_bytes()

    # same name again: refused before any work, nothing changes
    code, _, err = _main("build", "sft", run_dir, "--out", ds, "--name", "gap", "--best-of-n")
    assert code == 2 and "already has a dataset named 'gap'" in err and "--overwrite" in err
    assert (ds / "dataset_info.json").read_bytes() == before and (ds / "gap/data.jsonl").read_bytes() == folder_before
    # a name whose companion entry (NAME_und) would collide with an existing entry: refused too
    code, _, err = _main("build", "dpo", run_dir, "--out", ds, "--name", "gap2")
    assert code == 2 and "'gap2'" in err

    # --overwrite: the folder and the entry are replaced; gap_und belonged to the old build and goes with it
    code, out, err = _main("build", "sft", run_dir, "--out", ds, "--name", "gap", "--best-of-n", "--overwrite")
    assert code == 0, err
    info = json.loads((ds / "dataset_info.json").read_text())
    assert {k: info[k] for k in others} == others and set(info) == {"mine", "gap2", "gap"}
    assert len(_rows(ds / "gap/data.jsonl")) == 5 and not (ds / "gap/und.jsonl").exists()
    assert "removed gap_und" in out
    assert not [p for p in ds.iterdir() if p.name.startswith(".")], "temporary folders left behind"

    # a folder of that name that unigap did not write is never replaced, even with --overwrite
    (ds / "users").mkdir()
    (ds / "users/precious.txt").write_text("keep me")
    code, _, err = _main("build", "dpo", run_dir, "--out", ds, "--name", "users", "--overwrite")
    assert code == 2 and "not written by unigap" in err and (ds / "users/precious.txt").read_text() == "keep me"

    # a dataset_info.json that is not JSON is never overwritten
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset_info.json").write_text("{not json")
    code, _, err = _main("build", "dpo", run_dir, "--out", bad, "--name", "x")
    assert code == 2 and "is not valid JSON" in err and (bad / "dataset_info.json").read_text() == "{not json"
    assert sorted(p.name for p in bad.iterdir()) == ["dataset_info.json"]


# ---------------------------------------------------------------------- atomicity
@pytest.mark.e2e
def test_killed_build_leaves_nothing_and_a_rerun_succeeds(tmp_path):
    run = write_synthetic_run(tmp_path / "big", num_prompts=6000, num_candidates=8)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset_info.json").write_text(json.dumps({"keep": {"file_name": "keep.json"}}, indent=1))
    before = (ds / "dataset_info.json").read_bytes()
    cmd = [str(BIN / "unigap"), "build", "dpo", str(run), "--out", str(ds), "--name", "big", "--copy"]
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        tmps = list(ds.glob(".big.*.tmp/images"))
        if tmps and len(os.listdir(tmps[0])) > 200:  # well into the build
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    assert killed, f"the build finished before it could be killed: {proc.stdout.read()[-500:]!r}"
    assert not (ds / "big").exists()
    assert (ds / "dataset_info.json").read_bytes() == before
    leftovers = list(ds.glob(".big.*.tmp"))
    assert len(leftovers) == 1  # hidden, unregistered: the host never sees it

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "removed 1 leftover folder(s)" in done.stdout
    assert not list(ds.glob(".big.*"))
    info = json.loads((ds / "dataset_info.json").read_text())
    assert info["keep"] == {"file_name": "keep.json"} and info["big"]["ranking"] is True
    rows = (ds / "big/data.jsonl").read_text().count("\n")
    assert rows == json.loads((ds / "big/manifest.json").read_text())["counts"]["total"]["pairs"] > 5000


# ---------------------------------------------------------------------- bad input
def _record_line(run: Path, i: int, k: int) -> int:
    lines = (run / "records.jsonl").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if (json.loads(line)["prompt_index"], json.loads(line)["candidate"]) == (i, k))


def _edit_record(run: Path, i: int, k: int, **changes) -> None:
    lines = (run / "records.jsonl").read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        if (record["prompt_index"], record["candidate"]) == (i, k):
            record.update(changes)
        out.append(json.dumps(record))
    (run / "records.jsonl").write_text("\n".join(out) + "\n")


def _save_codes(path: Path, codes) -> None:
    np.save(path, np.asarray(codes, dtype=np.int32))


BAD = {
    "missing png": (lambda r: (r / "images/000002-001.png").unlink(), ["image file", "000002-001.png", "does not exist"]),
    "corrupt png": (
        lambda r: (r / "images/000002-001.png").write_bytes((r / "images/000002-001.png").read_bytes()[:40]),
        ["000002-001.png", "not a readable PNG"],
    ),
    "missing codes": (lambda r: (r / "images/000002-001.codes.npy").unlink(), ["codes file", "does not exist"]),
    "corrupt codes": (
        lambda r: (r / "images/000002-001.codes.npy").write_bytes(b"\x93NUMPY garbage"),
        ["000002-001.codes.npy", "not a readable .npy"],
    ),
    "codes too short": (
        lambda r: _save_codes(r / "images/000002-001.codes.npy", range(15)),
        ["000002-001.codes.npy", "has 15 codes but the model draws 16"],
    ),
    "codes out of range": (
        lambda r: _save_codes(r / "images/000002-001.codes.npy", [64] + [0] * 15),
        ["000002-001.codes.npy", "code 64, outside the model's codebook [0, 64)"],
    ),
    "negative code": (
        lambda r: _save_codes(r / "images/000002-001.codes.npy", [-1] + [0] * 15),
        ["000002-001.codes.npy", "code -1"],
    ),
    "record from another model": (
        lambda r: _edit_record(r, 2, 1, model_fingerprint="another-model"),
        ["'another-model'", "different runs / models are mixed"],
    ),
    "path outside the run": (
        lambda r: _edit_record(r, 2, 1, image="../elsewhere/000002-001.png"),
        ["'../elsewhere/000002-001.png' points outside the run directory"],
    ),
    "symlink outside the run": (
        lambda r: ((r / "images/000002-001.png").unlink(), (r / "images/000002-001.png").symlink_to(r.parent / "x.png")),
        ["symlink that resolves outside the run directory"],
    ),
    "accepted disagrees with p_yes": (
        lambda r: _edit_record(r, 2, 1, accepted=False),
        ["accepted=false disagrees with p_yes=0.8"],
    ),
    "incomplete run": (lambda r: (r / "summary.json").unlink(), ["is not complete", "--allow-partial"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_runs_fail_naming_the_record_and_write_nothing(tmp_path, run_dir, case):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    (tmp_path / "x.png").write_bytes((run / "images/000000-000.png").read_bytes())
    line = _record_line(run, 2, 1)
    mutate, words = BAD[case]
    mutate(run)
    ds = tmp_path / "ds"
    code, _out, err = _main("build", "sft", run, "--out", ds, "--name", "gap")
    assert code == 2 and err.startswith("unigap build: error: "), (code, err)
    for word in words:
        assert word in err, (word, err)
    if case != "incomplete run":
        assert f"records.jsonl:{line}" in err, err  # the record is named by file:line
    assert not ds.exists() or sorted(os.listdir(ds)) == []


def test_partial_run_needs_allow_partial(tmp_path, tiny_model, adapter):
    run = make_run(tiny_model, tmp_path / "run", PROMPTS, num_candidates=4, p_yes=lambda i, k: P[i][k],
                   complete=False, finished=4, adapter=adapter)
    code, _, err = _main("build", "dpo", run, "--out", tmp_path / "ds", "--name", "part")
    assert code == 2 and "4 prompts finished" in err and "--allow-partial" in err
    code, _out, err = _main("build", "dpo", run, "--out", tmp_path / "ds", "--name", "part", "--allow-partial")
    assert code == 0, err
    got = [tuple(_cand(x)[1] for x in r["images"]) for r in _rows(tmp_path / "ds/part/data.jsonl")]
    assert got == [(0, 3), (1, 2)]  # prompts 0 and 3 of DPO_CASES[()], the finished ones
    assert json.loads((tmp_path / "ds/part/manifest.json").read_text())["sources"][0]["complete"] is False


def test_runs_of_different_models_are_not_mixed(tmp_path, run_dir):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    meta = json.loads((other / "run.json").read_text())
    meta["model_fingerprint"] = "another-model"
    (other / "run.json").write_text(json.dumps(meta))
    code, _, err = _main("build", "dpo", run_dir, other, "--out", tmp_path / "ds", "--name", "x")
    assert code == 2 and "mixed runs from different models" in err and str(other) in err
    assert not (tmp_path / "ds").exists()
    # every record of `other` now disagrees with its own run.json as well
    code, _, err = _main("build", "dpo", other, "--out", tmp_path / "ds", "--name", "x")
    assert code == 2 and f"{other / 'records.jsonl'}:1:" in err

    # two runs of one model: one dataset, images kept apart
    again = tmp_path / "again"
    shutil.copytree(run_dir, again)
    code, _out, err = _main("build", "dpo", run_dir, again, "--out", tmp_path / "ds", "--name", "both")
    assert code == 0, err
    rows = _rows(tmp_path / "ds/both/data.jsonl")
    assert len(rows) == 2 * len(DPO_CASES[()]) and rows[0]["images"][0] == "both/images/run0-000000-000.png"


# ---------------------------------------------------------------------- encode
def _picture(seed: int, size, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)).convert("RGBA")
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8))
    if mode == "P":
        return _picture(seed, size).convert("P")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
    raise ValueError(mode)


def _encoded(ds: Path, name: str, adapter) -> list[tuple[str, list[int]]]:
    from unigap.codes import load_gen_target

    return [
        (r["messages"][0]["content"], load_gen_target(str(ds / r["images"][0]), adapter.spec).tolist())
        for r in _rows(ds / name / "data.jsonl")
    ]


def test_encode_loads_only_the_image_tokenizer_and_takes_dtype(tmp_path, tiny_model, adapter, monkeypatch):
    import unigap.loading

    folder = tmp_path / "pics"
    folder.mkdir()
    for n in range(3):
        _picture(n, (40 + 8 * n, 40), "RGB").save(folder / f"{n}.png")
        (folder / f"{n}.txt").write_text(f"picture {n}\n")
    loaded = []
    real = unigap.loading.load_image_tokenizer
    monkeypatch.setattr(unigap.loading, "load_unified", lambda *a, **k: pytest.fail("the whole model was loaded"))
    monkeypatch.setattr(unigap.loading, "load_image_tokenizer",
                        lambda *a, **k: loaded.append(k) or real(*a, **k))
    lora = tmp_path / "lora"
    lora.mkdir()
    ds = tmp_path / "ds"
    code, _out, err = _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "b", "--no-progress",
                            "--dtype", "bfloat16", "--adapter", lora, "--device", "cpu")
    assert code == 0, err
    assert loaded == [{"device": "cpu", "dtype": "bfloat16"}]
    model = json.loads((ds / "b/manifest.json").read_text())["model"]
    assert model["dtype"] == "bfloat16" and model["adapter_name_or_path"] == str(lora)
    got = _encoded(ds, "b", adapter)
    assert len(got) == 3 and all(len(codes) == adapter.spec.num_image_tokens for _, codes in got)
    code, _out, err = _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "c", "--no-progress",
                            "--adapter", tmp_path / "missing")
    assert code == 2 and "missing" in err and not (ds / "c").exists()


def test_encode_folder_of_pngs_any_size_and_mode(tmp_path, tiny_model, adapter):
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    specs = [("wide", (80, 50), "RGB"), ("tall", (40, 90), "RGBA"), ("small", (20, 20), "L"),
             ("palette", (64, 64), "P"), ("deep", (48, 48), "I;16"), ("big", (300, 200), "RGB")]
    for n, (stem, size, mode) in enumerate(specs):
        _picture(n, size, mode).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(f"a {stem} picture\n")
    ds = tmp_path / "ds"
    code, out, err = _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "mine", "--batch-size",
                           "4", "--no-progress")
    assert code == 0, err
    got = _encoded(ds, "mine", adapter)
    order = sorted(specs)  # files are taken in name order
    assert [text for text, _ in got] == [f"a {stem} picture" for stem, _, _ in order]
    for (stem, _, mode), (_, codes) in zip(order, got):
        image = Image.open(folder / f"{stem}.png")
        if mode in ("RGB", "L", "P"):  # plain conversions: the model's own encoder, independently applied
            assert codes == adapter.encode_images([image.convert("RGB")], fit="crop")[0].tolist(), stem
        if mode == "RGBA":  # transparency goes over white
            white = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
            assert codes == adapter.encode_images([white], fit="crop")[0].tolist()
    manifest = json.loads((ds / "mine/manifest.json").read_text())
    prep = manifest["preprocessing"]
    assert prep["fit"] == "crop" and prep["size"] == adapter.spec.image_size and prep["resample"] == "bicubic"
    assert manifest["model"]["dtype"] == "float32"  # auto on cpu, a float32 checkpoint
    inputs = manifest["counts"]["inputs"]
    assert inputs["modes"] == {"RGB": 2, "RGBA": 1, "L": 1, "P": 1, "I;16": 1}
    assert inputs["non_square"] == 3 and inputs["upscaled"] == 1 and inputs["max_side"] == 300
    assert json.loads((ds / "dataset_info.json").read_text())["mine"]["file_name"] == "mine/data.jsonl"
    assert "6 generation rows" in out and "crop-fitted to 32px" in out
    # the PNG beside the codes is what the codes decode to
    first = _rows(ds / "mine/data.jsonl")[0]["images"][0]
    recon = adapter.decode_codes(np.asarray([got[0][1]]))[0]
    assert np.array_equal(np.asarray(Image.open(ds / first).convert("RGB")), np.asarray(recon))


def test_encode_datasets_dataset_and_jsonl(tmp_path, tiny_model, adapter):
    import datasets
    from PIL import Image

    images = [_picture(10 + n, (40 + 10 * n, 30), "RGB") for n in range(5)]
    texts = [f"caption {n}" for n in range(5)]
    ds_src = tmp_path / "hf"
    data = datasets.Dataset.from_dict({"picture": images, "caption": texts, "other": list(range(5))})
    data.cast_column("picture", datasets.Image()).save_to_disk(str(ds_src))
    out = tmp_path / "ds"
    code, _printed, err = _main("encode", ds_src, "--model", tiny_model, "--out", out, "--name", "hf", "--fit", "pad",
                               "--png", "input", "--image-column", "picture", "--text-column", "caption",
                               "--batch-size", "2", "--no-progress")
    assert code == 0, err
    got = _encoded(out, "hf", adapter)
    assert [t for t, _ in got] == texts
    for image, (_, codes) in zip(images, got):
        assert codes == adapter.encode_images([image], fit="pad")[0].tolist()
    first = Image.open(out / _rows(out / "hf/data.jsonl")[0]["images"][0])
    assert first.size == (32, 32)  # --png input: the padded, resized input
    manifest = json.loads((out / "hf/manifest.json").read_text())
    assert manifest["preprocessing"]["fit"] == "pad" and manifest["source"]["kind"] == "datasets"

    # a JSONL of image paths (relative to the file) into the same dataset dir: merged, not replaced
    for n, image in enumerate(images[:3]):
        image.save(tmp_path / f"j{n}.png")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": f"j{n}.png", "text": f"j {n}"}) + "\n"
                                                  for n in range(3)))
    code, _, err = _main("encode", tmp_path / "pairs.jsonl", "--model", tiny_model, "--out", out, "--name", "js",
                         "--no-progress")
    assert code == 0, err
    assert [c for _, c in _encoded(out, "js", adapter)] == [
        adapter.encode_images([image], fit="crop")[0].tolist() for image in images[:3]
    ]
    assert set(json.loads((out / "dataset_info.json").read_text())) == {"hf", "js"}

    # a missing column is named with the ones that exist
    code, _, err = _main("encode", ds_src, "--model", tiny_model, "--out", out, "--name", "x", "--no-progress")
    assert code == 2 and "no column 'image'" in err and "picture" in err


def test_encode_bad_images_and_captions_are_named(tmp_path, tiny_model):
    folder = tmp_path / "pics"
    folder.mkdir()
    _picture(0, (32, 32)).save(folder / "a.png")
    (folder / "a.txt").write_text("fine")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "b.txt").write_text("broken")
    ds = tmp_path / "ds"
    code, _, err = _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "x", "--no-progress")
    assert code == 2 and "b.png" in err and "not a readable image" in err
    assert not ds.exists() or not [p for p in ds.iterdir()]
    (folder / "b.png").unlink()
    _picture(1, (32, 32)).save(folder / "c.png")  # no c.txt
    code, _, err = _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "x", "--no-progress")
    assert code == 2 and "c.png: no caption" in err
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "t"}) + "\n")
    code, _, err = _main("encode", tmp_path / "meta", "--model", tiny_model, "--out", ds, "--name", "x",
                         "--no-progress")
    assert code == 2 and "metadata.jsonl:1: image file" in err and "gone.png does not exist" in err
    assert not ds.exists() or not [p for p in ds.iterdir()]


# ---------------------------------------------------------------------- the host trains on them
def _lora_b_nonzero(out: Path) -> int:
    from safetensors.torch import load_file

    weights = load_file(out / "adapter_model.safetensors")
    b = [v for k, v in weights.items() if "lora_B" in k]
    assert b, sorted(weights)[:5]
    return sum(int(v.abs().sum() > 0) for v in b)  # lora_B starts at zero: non-zero = trained


@pytest.mark.e2e
def test_host_trains_sft_on_built_and_encoded_data(tmp_path, tiny_model, run_dir):
    ds = tmp_path / "ds"
    assert _main("build", "sft", run_dir, "--out", ds, "--name", "gap", "--with-und")[0] == 0
    folder = tmp_path / "pics"
    folder.mkdir()
    for n in range(4):
        _picture(n, (40, 30)).save(folder / f"{n}.png")
        (folder / f"{n}.txt").write_text(f"my picture {n}")
    assert _main("encode", folder, "--model", tiny_model, "--out", ds, "--name", "mine", "--no-progress")[0] == 0
    out = tmp_path / "out"
    lf_train(base_config(tiny_model, ds, "gap,gap_und,mine", out, max_steps=3, per_device_train_batch_size=8,
                         gen_prompt_dropout=0.0), tmp_path)
    assert _lora_b_nonzero(out) > 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [r for r in history if "loss" in r]
    assert len(steps) == 3 and all("gen_loss" in r and "text_loss" in r for r in steps), steps


@pytest.mark.e2e
def test_host_trains_dpo_on_built_pairs(tmp_path, tiny_model, run_dir):
    ds = tmp_path / "ds"
    assert _main("build", "dpo", run_dir, "--out", ds, "--name", "pairs", "--pairs", "2")[0] == 0
    out = tmp_path / "out"
    lf_train(base_config(tiny_model, ds, "pairs", out, stage="dpo", max_steps=2, pref_beta=0.1), tmp_path)
    assert _lora_b_nonzero(out) > 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [r for r in history if "rewards/margins" in r]
    assert len(steps) == 2 and all("rewards/chosen" in r and "loss" in r for r in steps), history
    assert json.loads((out / "unigap_reference_check.json").read_text())["unchanged"]


# ---------------------------------------------------------------------- a real `unigap selfplay` run
@pytest.mark.e2e
def test_builds_from_a_real_selfplay_run(tmp_path, tiny_model):
    from conftest import run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    proc = run([str(BIN / "unigap"), "selfplay", f"model_name_or_path={tiny_model}", f"prompts={prompts}",
                f"output_dir={out}", "num_candidates=3", "judge_threshold=0.475", "seed=3", "progress=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _rows(out / "records.jsonl")
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    ds = tmp_path / "ds"
    code, printed, err = _main("build", "sft", out, "--out", ds, "--name", "sft")
    accepted = sum(r["accepted"] for r in records)
    if accepted == 0:  # nothing to train on: said so, nothing written
        assert code == 2 and "nothing to build" in err and not (ds / "sft").exists()
    else:
        assert code == 0, err
        rows = _rows(ds / "sft/data.jsonl")
        assert len(rows) == accepted
        assert sorted(_cand(r["images"][0]) for r in rows) == sorted(
            (r["prompt_index"], r["candidate"]) for r in records if r["accepted"])
        pool = _rows(ds / "sft/discard_pool.jsonl")
        assert [p["prompt_index"] for p in pool] == [i for i, rs in by_prompt.items() if not any(r["accepted"] for r in rs)]
    code, _printed, err = _main("build", "dpo", out, "--out", ds, "--name", "dpo", "--any-outcome")
    assert code == 0, err
    rows = _rows(ds / "dpo/data.jsonl")
    expected = []
    for i, rs in by_prompt.items():
        best = max(rs, key=lambda r: (r["p_yes"], -r["candidate"]))
        worst = min(rs, key=lambda r: (r["p_yes"], -r["candidate"]))
        if best["p_yes"] > worst["p_yes"]:
            expected.append(((i, best["candidate"]), (i, worst["candidate"])))
    assert [tuple(_cand(x) for x in r["images"]) for r in rows] == expected
