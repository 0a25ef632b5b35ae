"""Loading: ``dtype: auto`` (one rule for self-play, generate and encode) and the image-tokenizer-only loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def bf16_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny checkpoint stored in bfloat16 and sharded (model.safetensors.index.json)."""
    from transformers import JanusForConditionalGeneration

    out = tmp_path_factory.mktemp("models") / "tiny-bf16-sharded"
    shutil.copytree(tiny_model, out)
    (out / "model.safetensors").unlink()
    model = JanusForConditionalGeneration.from_pretrained(tiny_model, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="300KB")
    assert (out / "model.safetensors.index.json").is_file()
    return out


def test_auto_dtype_keeps_a_16_bit_checkpoint_on_cpu(tiny_model, bf16_model):
    from unigap.loading import checkpoint_dtype, resolve_dtype

    assert checkpoint_dtype(str(tiny_model)) == "float32"
    assert checkpoint_dtype(str(bf16_model)) == "bfloat16"
    assert resolve_dtype("auto", "cpu", str(bf16_model)) == "bfloat16"
    assert resolve_dtype(None, "cpu", str(bf16_model)) == "bfloat16"
    assert resolve_dtype("auto", "cpu", str(tiny_model)) == "float32"
    assert resolve_dtype("auto", "cuda:1", str(tiny_model)) == "bfloat16"
    assert resolve_dtype("float32", "cpu", str(bf16_model)) == "float32"


def test_auto_dtype_of_a_checkpoint_that_names_none_is_float32(tiny_model, tmp_path):
    from unigap.loading import resolve_dtype

    folder = tmp_path / "nodtype"
    folder.mkdir()
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert resolve_dtype("auto", "cpu", str(folder)) == "float32"


def test_selfplay_and_load_unified_use_the_same_rule(bf16_model, tmp_path):
    from unigap.loading import load_unified
    from unigap.selfplay import SelfPlayConfig, _Dist, _resolve_device

    config = SelfPlayConfig(model_name_or_path=str(bf16_model), output_dir=str(tmp_path), prompts="x", device="cpu")
    assert _resolve_device(config, _Dist()) == ("cpu", "bfloat16")
    adapter = load_unified(str(bf16_model), device="cpu")
    assert {p.dtype for p in adapter.model.parameters()} == {torch.bfloat16}  # not upcast
    config.dtype = "float32"
    assert _resolve_device(config, _Dist()) == ("cpu", "float32")


def test_bad_dtype_is_a_unigap_error(tiny_model):
    from unigap.errors import UnigapError
    from unigap.loading import resolve_dtype

    with pytest.raises(UnigapError, match="float64"):
        resolve_dtype("float64", "cpu", str(tiny_model))


def _images():
    import numpy as np

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 40), (31, 50), (64, 20))]


@pytest.mark.parametrize("which", ["single file", "sharded bf16"])
def test_image_tokenizer_alone_gives_the_full_models_codes(which, tiny_model, bf16_model):
    from unigap.loading import load_image_tokenizer, load_unified

    path = str(tiny_model if which == "single file" else bf16_model)
    full = load_unified(path, device="cpu")
    light = load_image_tokenizer(path, device="cpu")
    assert light.spec == full.spec and light.image_mean == full.image_mean and light.image_std == full.image_std
    images = _images()
    for fit in ("crop", "pad"):
        codes = light.encode_images(images, fit=fit)
        assert codes.shape == (3, full.spec.num_image_tokens)
        assert torch.equal(codes, full.encode_images(images, fit=fit))
    assert len({tuple(row) for row in codes.tolist()}) == 3  # different images, different codes
    assert [i.tobytes() for i in light.decode_codes(codes)] == [i.tobytes() for i in full.decode_codes(codes)]
    assert torch.equal(light.pixels(images), full.pixels(images))
    # only the image tokenizer is loaded: its parameters and nothing else
    n_light = sum(p.numel() for p in light.model.parameters())
    n_vq = sum(p.numel() for n, p in full.model.named_parameters() if "vqmodel" in n)
    n_full = sum(p.numel() for p in full.model.parameters())
    assert n_light == n_vq and n_full - n_light >= sum(p.numel() for p in full.backbone_parameters())
    assert {p.dtype for p in light.model.parameters()} == {p.dtype for p in full.model.model.vqmodel.parameters()}


def test_a_checkpoint_without_safetensors_is_loaded_whole(tiny_model, tmp_path, monkeypatch):
    from unigap.models.janus.adapter import JanusAdapter

    loaded = []
    monkeypatch.setattr(JanusAdapter, "load", classmethod(lambda cls, path, dtype, adapter_path=None: loaded.append(path)))
    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    JanusAdapter.load_image_tokenizer(str(folder), dtype=torch.float32)
    assert loaded == [str(folder)]
