"""``unigap convert showo``: released-style folders (Show-o, MAGVIT-v2, Phi) -> one checkpoint folder.

The "release" is written here from the tiny Show-o in the released layout: a diffusers-style
``config.json`` without the Phi config, ``showo.*`` tensors in ``pytorch_model.safetensors``,
MAGVIT-v2's ``encoder.*`` / ``decoder.*`` in its own folder, Phi's config and a tokenizer without
Show-o's tokens.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import BIN, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_showo):
    from safetensors.torch import save_file

    from unigap.models.showo.modeling import ShowoForConditionalGeneration
    from unigap.models.showo.tiny import TinySpec, showo_text_tokenizer

    model = ShowoForConditionalGeneration.from_pretrained(tiny_showo)
    cfg = model.config
    state = model.state_dict()
    root = tmp_path_factory.mktemp("release")
    showo, magvit, phi = root / "show-o", root / "magvitv2", root / "phi-1_5"
    for folder in (showo, magvit, phi):
        folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("showo.")}, showo / "pytorch_model.safetensors")
    (showo / "config.json").write_text(json.dumps({
        "_class_name": "Showo", "codebook_size": cfg.codebook_size, "llm_model_path": "microsoft/phi-1_5",
        "llm_vocab_size": cfg.llm_vocab_size, "load_from_showo": False, "mask_token_id": cfg.mask_token_id,
        "num_vq_tokens": cfg.num_vq_tokens, "vocab_size": cfg.vocab_size, "w_clip_vit": False}))
    save_file({k[len("vq_model."):]: v.contiguous() for k, v in state.items() if k.startswith("vq_model.")},
              magvit / "pytorch_model.safetensors")
    (magvit / "config.json").write_text(json.dumps({**cfg.vq_config, "_class_name": "MAGVITv2"}))
    spec = TinySpec()
    showo_text_tokenizer(spec.text_vocab, spec.seed).save_pretrained(phi)
    phi_config = {k: v for k, v in cfg.llm_config.items() if k != "qk_layernorm"}  # Phi-1.5's own says nothing / false
    (phi / "config.json").write_text(json.dumps({**phi_config, "model_type": "phi", "vocab_size": 51200}))
    return {"showo": showo, "magvit": magvit, "phi": phi, "model": model}


def _convert(release, out, *extra):
    return run([str(BIN / "unigap"), "convert", "showo", "--showo", str(release["showo"]), "--magvit",
                str(release["magvit"]), "--phi", str(release["phi"]), "--out", str(out), *extra])


def test_converted_checkpoint_equals_the_model_and_loads_everywhere(tmp_path, release, tiny_showo):
    from transformers import AutoTokenizer

    from unigap.loading import load_unified
    from unigap.models.showo.modeling import ShowoForConditionalGeneration

    out = tmp_path / "converted"
    proc = _convert(release, out, "--max-text-len", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote a showo checkpoint" in proc.stdout
    converted = ShowoForConditionalGeneration.from_pretrained(out)
    original = release["model"].state_dict()
    assert converted.state_dict().keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in converted.state_dict().items())
    bookkeeping = {"_name_or_path", "architectures", "dtype", "transformers_version"}

    def phi(config):
        return {k: v for k, v in config.phi_config().to_dict().items() if k not in bookkeeping}

    assert phi(converted.config) == phi(release["model"].config) and converted.config.phi_config().qk_layernorm
    assert converted.config.max_text_len == 32 and converted.config.image_size == 32
    ours, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_showo)
    assert ours.get_vocab() == theirs.get_vocab() and ours.pad_token == "[PAD]"
    a, b = load_unified(str(out), dtype="float32"), load_unified(str(tiny_showo), dtype="float32")
    assert torch.equal(a.generate(["a red square"], seeds=[3], steps=4), b.generate(["a red square"], seeds=[3], steps=4))
    provenance = json.loads((out / "unigap_convert.json").read_text())
    assert provenance["sources"]["showo"].endswith("pytorch_model.safetensors")
    # bf16 on request: half the bytes
    half = tmp_path / "bf16"
    assert _convert(release, half, "--dtype", "bfloat16").returncode == 0
    assert (half / "model.safetensors").stat().st_size < 0.6 * (out / "model.safetensors").stat().st_size


def _broken(tmp_path, release, name):
    copy = {k: tmp_path / name / release[k].name for k in ("showo", "magvit", "phi")}
    for key, path in copy.items():
        shutil.copytree(release[key], path)
    return {**release, **copy}


def test_a_missing_file_is_named_and_nothing_is_written(tmp_path, release):
    broken = _broken(tmp_path, release, "missing")
    (broken["magvit"] / "pytorch_model.safetensors").unlink()
    out = tmp_path / "out"
    proc = _convert(broken, out)
    assert proc.returncode == 2 and "magvitv2 has no weights file" in proc.stderr, proc.stderr
    (broken["phi"] / "config.json").unlink()
    proc = _convert(broken, out)
    assert proc.returncode == 2 and "phi-1_5/config.json is missing" in proc.stderr, proc.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_mismatched_tensor_or_tokenizer_is_named(tmp_path, release):
    from safetensors.torch import load_file, save_file

    broken = _broken(tmp_path, release, "shape")
    weights = broken["showo"] / "pytorch_model.safetensors"
    tensors = load_file(weights)
    key = "showo.model.layers.1.mlp.fc1.weight"
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, weights)
    out = tmp_path / "out"
    proc = _convert(broken, out)
    assert proc.returncode == 2 and "'model.layers.1.mlp.fc1.weight' has shape" in proc.stderr, proc.stderr
    assert "show-o/pytorch_model.safetensors" in proc.stderr and not out.exists()
    other = _broken(tmp_path, release, "vocab")
    config = json.loads((other["showo"] / "config.json").read_text())
    config.update(llm_vocab_size=config["llm_vocab_size"] + 1, vocab_size=config["vocab_size"] + 1,
                  mask_token_id=config["mask_token_id"] + 1)
    (other["showo"] / "config.json").write_text(json.dumps(config))
    proc = _convert(other, out)
    assert proc.returncode == 2 and "it is not the tokenizer this checkpoint was trained with" in proc.stderr, proc.stderr


def test_an_existing_folder_is_never_clobbered(tmp_path, release):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    proc = _convert(release, out)
    assert proc.returncode == 2 and (out / "keep.txt").read_text() == "user data"
    assert _convert(release, out, "--force").returncode == 0 and (out / "config.json").exists()
