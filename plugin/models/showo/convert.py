"""``unigap convert showo``: the released Show-o v1 files -> one self-contained checkpoint folder.

The release is three folders: Show-o itself (a diffusers-style ``config.json`` that names
``microsoft/phi-1_5`` instead of holding its config, and ``pytorch_model.safetensors`` with
``showo.*`` tensors), the MAGVIT-v2 image tokenizer (``showlab/magvitv2``: ``encoder.*``,
``decoder.*``) and Phi-1.5's folder (its ``config.json`` and tokenizer).  The result holds the
Phi config inside its own ``config.json``, all tensors in ``model.safetensors`` (``showo.*`` as
released, the image tokenizer under ``vq_model.``), the tokenizer with ``[PAD]`` and the 9
special tokens at the ids Show-o was trained with, and a processor.  ``model_name_or_path: OUT``
then works everywhere.  Any missing or mismatched file is an error naming it; the output folder
appears whole or not at all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ...fsutil import atomic_directory
from ..base import FamilyError

WEIGHT_NAMES = ("pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")


class ConvertError(FamilyError):
    """A released file that is missing or does not fit the others."""


def add_arguments(parser: Any) -> None:
    parser.add_argument("--showo", required=True, help="the Show-o folder (config.json + pytorch_model.safetensors)")
    parser.add_argument("--magvit", required=True, help="the MAGVIT-v2 folder (showlab/magvitv2)")
    parser.add_argument("--phi", required=True, help="Phi-1.5's folder (its config.json and tokenizer files)")
    parser.add_argument("--out", required=True, help="checkpoint folder to create")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the written weights (the release is float32)")
    parser.add_argument("--image-size", dest="image_size", type=int,
                        help="image side in pixels (default: 16 x sqrt(num_vq_tokens): 256 or 512)")
    parser.add_argument("--max-text-len", dest="max_text_len", type=int, default=129,
                        help="the T2I text length of the sampler (Show-o's 129)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")


def convert_from_args(args: Any) -> Path:
    return convert_showo(args.showo, args.magvit, args.phi, args.out, dtype=args.dtype, image_size=args.image_size,
                         max_text_len=args.max_text_len, overwrite=args.force)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConvertError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path} does not hold a JSON object")
    return data


def _weights(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise ConvertError(f"{folder} has no weights file (looked for {', '.join(WEIGHT_NAMES)})")


def _read_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file: name it
            raise ConvertError(f"{path} is not a readable safetensors file ({err})") from None
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise ConvertError(f"{path} is not a readable PyTorch weights file ({err})") from None
    return data.get("state_dict", data) if isinstance(data, dict) else {}


def _check_against(module: Any, tensors: dict[str, Any], source: Path, what: str) -> None:
    """Every tensor ``module`` needs is in ``tensors`` with its shape, and nothing else is."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ConvertError(f"{source}: {len(missing)} tensors of {what} are missing, e.g. {missing[0]!r}")
    if unexpected:
        raise ConvertError(f"{source}: {len(unexpected)} tensors are not part of {what}, e.g. {unexpected[0]!r}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ConvertError(f"{source}: {key!r} has shape {list(tensors[key].shape)}, {what} needs {list(shape)}")


def _magvit_config(folder: Path) -> Any:
    """The released MAGVIT-v2 architecture, with the values its ``config.json`` gives for keys unigap's
    ``MagvitConfig`` knows (other keys are ignored: the tensors' shapes are checked one by one anyway)."""
    from .magvit import MagvitConfig

    path = folder / "config.json"
    given = _json(path) if path.is_file() else {}
    defaults = MagvitConfig().to_dict()
    known = {k: v for k, v in given.items() if k in defaults}
    try:
        return MagvitConfig.from_dict({**defaults, **known})
    except (ValueError, TypeError) as err:
        raise ConvertError(f"{path}: {err}") from None


def convert_showo(showo_dir: str, magvit_dir: str, phi_dir: str, out: str, *, dtype: str = "float32",
                  image_size: int | None = None, max_text_len: int = 129, overwrite: bool = False) -> Path:
    """Convert the released folders into ``out`` (see the module's docstring); returns ``out``."""
    import torch
    from transformers import AutoTokenizer

    from .checkpoint import add_showo_tokens, save_checkpoint
    from .magvit import MagvitConfig, MagvitV2  # noqa: F401
    from .modeling import ShowoConfig, ShowoForConditionalGeneration

    showo, magvit, phi = Path(showo_dir), Path(magvit_dir), Path(phi_dir)
    for folder, name in ((showo, "--showo"), (magvit, "--magvit"), (phi, "--phi")):
        if not folder.is_dir():
            raise ConvertError(f"{name} {folder} is not a folder")
    released = _json(showo / "config.json")
    for key in ("llm_vocab_size", "codebook_size", "num_vq_tokens", "vocab_size"):
        if not isinstance(released.get(key), int):
            raise ConvertError(f"{showo / 'config.json'} has no integer {key!r}: is it Show-o's config?")
    if released.get("w_clip_vit"):
        raise ConvertError(f"{showo / 'config.json'}: w_clip_vit checkpoints (CLIP features for understanding) "
                           "are not supported; use show-o or show-o-512x512")
    llm_vocab, codebook, tokens = released["llm_vocab_size"], released["codebook_size"], released["num_vq_tokens"]
    if released["vocab_size"] != llm_vocab + 10 + codebook + 1:
        raise ConvertError(f"{showo / 'config.json'}: vocab_size {released['vocab_size']} is not llm_vocab_size + 10 + "
                           f"codebook_size + 1 = {llm_vocab + 10 + codebook + 1}")
    if released.get("mask_token_id", released["vocab_size"] - 1) != released["vocab_size"] - 1:
        raise ConvertError(f"{showo / 'config.json'}: mask_token_id must be vocab_size - 1")
    llm = _json(phi / "config.json")
    if llm.get("model_type") != "phi":
        raise ConvertError(f"{phi / 'config.json'} is a {llm.get('model_type')!r} config, not Phi's")
    vq_config = _magvit_config(magvit)
    if vq_config.codebook_size != codebook:
        raise ConvertError(f"{showo / 'config.json'}: codebook_size {codebook} but MAGVIT-v2 has {vq_config.codebook_size} codes")
    side = int(round(math.sqrt(tokens)))
    if side * side != tokens:
        raise ConvertError(f"{showo / 'config.json'}: num_vq_tokens {tokens} is not a square")
    image_size = image_size or side * vq_config.downsample
    if image_size != side * vq_config.downsample:
        raise ConvertError(f"--image-size {image_size} does not give {side} x {side} codes (MAGVIT-v2 downsamples by 16)")
    vq_config = MagvitConfig(**{**vq_config.to_dict(), "resolution": image_size})

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(phi))
    except (OSError, ValueError) as err:
        raise ConvertError(f"{phi}: no readable tokenizer ({str(err)[:200]})") from None
    add_showo_tokens(tokenizer, llm_vocab, where=f"the tokenizer in {phi}")
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    llm_config = {k: v for k, v in llm.items() if k not in ("vocab_size", "architectures", "auto_map", "_name_or_path",
                                                               "transformers_version", "torch_dtype", "dtype")}
    llm_config["qk_layernorm"] = True  # Show-o's Phi always has it (Phi-1.5's own config says false)
    config = ShowoConfig(llm_config=llm_config, vq_config=vq_config.to_dict(), llm_vocab_size=llm_vocab,
                         codebook_size=codebook, num_vq_tokens=tokens, image_size=image_size,
                         max_text_len=max_text_len, eos_token_id=eos, bos_token_id=eos)

    showo_file, vq_file = _weights(showo), _weights(magvit)
    showo_tensors = {k[len("showo."):]: v for k, v in _read_tensors(showo_file).items() if k.startswith("showo.")}
    if not showo_tensors:
        raise ConvertError(f"{showo_file} holds no showo.* tensors")
    vq_tensors = _read_tensors(vq_file)
    with torch.device("meta"):
        model = ShowoForConditionalGeneration(config)
    _check_against(model.showo, showo_tensors, showo_file, "Show-o's language model (Phi config from " + str(phi) + ")")
    vq = MagvitV2(vq_config)
    try:
        vq.load_checkpoint_state(vq_tensors)
    except (ValueError, FamilyError) as err:
        raise ConvertError(f"{vq_file}: {err}") from None
    model.showo.load_state_dict(showo_tensors, strict=True, assign=True)
    model.vq_model = vq
    target = getattr(torch, dtype)
    model = model.to(target)
    model.config.dtype = dtype
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_checkpoint(tmp, model, tokenizer)
        provenance = {"converted_by": "unigap convert showo", "dtype": dtype,
                      "sources": {"showo": str(showo_file.resolve()), "magvit": str(vq_file.resolve()),
                                  "phi": str(phi.resolve())},
                      "sizes": {"showo": showo_file.stat().st_size, "magvit": vq_file.stat().st_size}}
        (tmp / "unigap_convert.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return Path(out)
