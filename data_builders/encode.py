"""``unigap encode``: your own image-text pairs -> generation SFT rows, VQ-encoded by the model.

Sources (``SOURCE``):

* a folder of images with captions: ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}``
  per line, the Hugging Face *imagefolder* convention; ``--text-column`` names the
  caption key), or else every image file with a same-stem ``.txt`` caption beside it;
* a JSONL file, one ``{"image": PATH, "text": ...}`` per line (paths relative to the file);
* a ``datasets`` dataset: a ``save_to_disk`` folder (``--split`` for a DatasetDict), or a
  ``.parquet`` / ``.csv`` / ``.arrow`` file, with ``--image-column`` (images, or paths
  relative to the source) and ``--text-column``.

Each image is prepared the way the model's generation path sees it: EXIF rotation
applied, transparency composited over white, 16-bit / float modes scaled to 8-bit
RGB, then ``--fit crop`` (centre square, default) or ``--fit pad`` (pad with the
image processor's mean colour, as the family's processor does for understanding), resized
(bicubic) to the model's image size and normalised with its mean / std.  The model's
own VQ tokenizer turns it into codes (batched, with a progress bar).  The dataset
gets ``images/0000000.png`` + ``.codes.npy`` per pair; the PNG is what the codes
decode to (``--png recon``, default) or the resized input (``--png input``).
The choices and what the inputs looked like are recorded in ``manifest.json``.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from .. import __version__
from ..jsonl import parse_object
from .build import DATA_FILE, IMAGES
from ..rowmeta import MANIFEST_FILE
from ..samples import DatasetFormat, GenSample
from .output import BuildError, Output, now_iso

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TABLE_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


class EncodeError(BuildError):
    """A source that cannot be encoded, with the file / line / row named."""


@dataclass
class EncodeOptions:
    fit: str = "crop"
    batch_size: int = 16
    image_column: str = "image"
    text_column: str = "text"
    split: str = "train"
    png: str = "recon"
    limit: int | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.fit not in ("crop", "pad"):
            raise EncodeError(f"--fit must be crop or pad, got {self.fit!r}")
        if self.png not in ("recon", "input"):
            raise EncodeError(f"--png must be recon or input, got {self.png!r}")
        if self.batch_size < 1:
            raise EncodeError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise EncodeError(f"--limit must be >= 1, got {self.limit}")


@dataclass
class Item:
    where: str  # "file:line", "folder/file.png", "SOURCE row 12"
    image: Any  # a PIL image, {"bytes"/"path"}, or a path (str)
    text: Any
    base: Path  # relative image paths are taken against this folder


# ---------------------------------------------------------------------- sources
def _jsonl_items(path: Path, image_key: str, text_key: str, base: Path) -> Iterator[Item]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = parse_object(line, where, EncodeError)
            if image_key not in row:
                raise EncodeError(f"{where}: no {image_key!r} (the image path; --image-column names another key)")
            yield Item(where, row[image_key], row.get(text_key), base)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _folder_items(folder: Path, text_key: str) -> tuple[int, Iterator[Item]]:
    metadata = folder / "metadata.jsonl"
    if metadata.is_file():
        return _count_lines(metadata), _jsonl_items(metadata, "file_name", text_key, folder)
    images = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and ".codes" not in p.name
    )
    if not images:
        raise EncodeError(
            f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no metadata.jsonl / datasets files"
        )

    def items() -> Iterator[Item]:
        for image in images:
            caption = image.with_suffix(".txt")
            if not caption.is_file():
                raise EncodeError(
                    f"{image}: no caption ({caption.name} beside it, or a metadata.jsonl with file_name / "
                    f"text in {folder})"
                )
            yield Item(str(image), str(image), caption.read_text(encoding="utf-8"), Path("."))

    return len(images), items()


def _dataset_items(ds: Any, source: Path, base: Path, opts: EncodeOptions) -> tuple[int, Iterator[Item]]:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if opts.split not in ds:
            raise EncodeError(f"{source} has no split {opts.split!r} (splits: {', '.join(ds)}); use --split")
        ds = ds[opts.split]
    for column in (opts.image_column, opts.text_column):
        if column not in ds.column_names:
            raise EncodeError(
                f"{source} has no column {column!r} (columns: {', '.join(ds.column_names)}); "
                "use --image-column / --text-column"
            )
    if isinstance(ds.features[opts.image_column], datasets.Image):
        ds = ds.cast_column(opts.image_column, datasets.Image(decode=False))  # decode here, errors named by row
    ds = ds.select_columns([opts.image_column, opts.text_column])

    def items() -> Iterator[Item]:
        for number, row in enumerate(ds):
            yield Item(f"{source} row {number}", row[opts.image_column], row[opts.text_column], base)

    return len(ds), items()


def open_source(source: str | os.PathLike, opts: EncodeOptions) -> tuple[str, int | None, Iterator[Item]]:
    """(kind, number of pairs, items) of ``source``."""
    path = Path(source)
    if not path.exists():
        raise EncodeError(f"source {path} does not exist")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            import datasets

            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as err:  # noqa: BLE001 - datasets raises many kinds
                raise EncodeError(f"{path} is not a readable datasets folder ({err})") from None
            return ("datasets", *_dataset_items(ds, path, path, opts))
        return ("imagefolder", *_folder_items(path, opts.text_column))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl", _count_lines(path), _jsonl_items(path, opts.image_column, opts.text_column, path.parent)
    if suffix in TABLE_EXTENSIONS:
        import datasets

        try:
            ds = datasets.load_dataset(TABLE_EXTENSIONS[suffix], data_files=str(path), split="train")
        except Exception as err:  # noqa: BLE001
            raise EncodeError(f"{path} is not a readable {TABLE_EXTENSIONS[suffix]} file ({err})") from None
        return ("datasets", *_dataset_items(ds, path, path.parent, opts))
    raise EncodeError(
        f"{path}: unknown source (a folder, .jsonl, .json, {', '.join(TABLE_EXTENSIONS)} or a datasets folder)"
    )


# ---------------------------------------------------------------------- images
def load_image(item: Item) -> Any:
    """The item's image as a fully loaded PIL image, or an error naming the item."""
    from PIL import Image

    value, name = item.image, None
    try:
        if isinstance(value, Image.Image):
            image = value
        else:
            if isinstance(value, dict):
                if value.get("bytes"):
                    name = value.get("path") or "embedded image bytes"
                    image = Image.open(io.BytesIO(value["bytes"]))
                    image.load()
                    return image
                value = value.get("path")
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise EncodeError(f"{item.where}: the image must be a path or an image, got {type(value).__name__}")
            path = Path(value)
            if not path.is_absolute():
                path = item.base / path
            name = str(path)
            if not path.is_file():
                raise EncodeError(f"{item.where}: image file {path} does not exist")
            image = Image.open(path)
        image.load()
        return image
    except EncodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise EncodeError(f"{item.where}: image {name or ''} is not a readable image ({err})".replace("  ", " ")) from None


def to_rgb(image: Any) -> Any:
    """8-bit RGB: EXIF rotation applied, transparency over white, 16-bit / float scaled."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def caption_of(item: Item) -> str:
    text = item.text
    if text is None:
        raise EncodeError(f"{item.where}: no caption (text column / key missing or null)")
    if not isinstance(text, str):
        raise EncodeError(f"{item.where}: the caption must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise EncodeError(f"{item.where}: the caption is empty")
    return text


# ---------------------------------------------------------------------- the build
def encode_dataset(
    source: str | os.PathLike,
    model: str,
    dataset_dir: str | os.PathLike,
    name: str,
    options: EncodeOptions | None = None,
    *,
    adapter_dir: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    adapter: Any = None,
    fmt: DatasetFormat,
) -> dict[str, Any]:
    """Encode image-text pairs into ``DATASET_DIR/NAME`` (atomic; the host's index merged last).

    Only the model's image tokenizer is loaded (:func:`unigap.loading.load_image_tokenizer`); a LoRA
    adapter (``adapter_dir``) never changes it, so it is recorded in the manifest and not loaded.
    ``adapter``: an already loaded adapter to encode with instead.
    """
    import numpy as np

    from ..codes import save_gen_image

    opts = options or EncodeOptions()
    opts.validate()
    if adapter_dir is not None and not Path(adapter_dir).exists():
        raise EncodeError(f"adapter {adapter_dir} does not exist")
    kind, total, items = open_source(source, opts)
    entries = {name: fmt.entry(f"{name}/{DATA_FILE}")}
    output = Output(dataset_dir, name, list(entries), fmt, overwrite=overwrite)
    resolved = None
    if adapter is None:
        from ..loading import default_device, load_image_tokenizer, resolve_dtype

        device = device or default_device()
        resolved = resolve_dtype(dtype, device, model)
        adapter = load_image_tokenizer(model, device=device, dtype=resolved)
    spec = adapter.spec
    if opts.limit is not None and total is not None:
        total = min(total, opts.limit)
    stats: dict[str, Any] = {"rows": 0, "modes": {}, "non_square": 0, "upscaled": 0, "min_side": None, "max_side": None}

    from tqdm.auto import tqdm

    with output.building() as tmp:
        images_dir = tmp / IMAGES
        images_dir.mkdir()
        bar = tqdm(total=total, unit="img", desc="unigap encode", disable=not opts.progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            with open(tmp / DATA_FILE, "w", encoding="utf-8") as data:

                def flush(batch: list[tuple[str, Any]]) -> None:
                    codes = adapter.encode_images([image for _, image in batch], fit=opts.fit).cpu()
                    if codes.shape != (len(batch), spec.num_image_tokens) or int(codes.min()) < 0 or \
                            int(codes.max()) >= spec.codebook_size:
                        raise EncodeError(f"the model's image tokenizer returned codes of shape {tuple(codes.shape)}, "
                                          f"expected ({len(batch)}, {spec.num_image_tokens}) in [0, {spec.codebook_size})")
                    pngs = adapter.decode_codes(codes) if opts.png == "recon" else _input_pngs(adapter, batch, opts)
                    for (text, _), png, row in zip(batch, pngs, codes.numpy().astype(np.int32)):
                        number = stats["rows"]
                        rel = f"{IMAGES}/{number:07d}.png"
                        save_gen_image(tmp / rel, png, row)
                        data.write(json.dumps(fmt.render(GenSample(text, output.path(rel))), ensure_ascii=False) + "\n")
                        stats["rows"] += 1
                    bar.update(len(batch))

                batch: list[tuple[str, Any]] = []
                for seen, item in enumerate(items):
                    if opts.limit is not None and seen >= opts.limit:
                        break
                    text = caption_of(item)
                    image = load_image(item)
                    _note(stats, image, spec.image_size)
                    batch.append((text, to_rgb(image)))
                    if len(batch) == opts.batch_size:
                        flush(batch)
                        batch = []
                if batch:
                    flush(batch)
        finally:
            bar.close()
        if not stats["rows"]:
            raise EncodeError(f"{source} holds no image-text pairs")
        manifest = {
            "unigap_version": __version__,
            "kind": "encode",
            "name": name,
            "created": now_iso(),
            "entries": {key: entry["file_name"] for key, entry in entries.items()},
            "source": {"path": str(Path(source).resolve()), "kind": kind},
            "model": {"model_name_or_path": model, "adapter_name_or_path": adapter_dir, "dtype": resolved,
                      "spec": _spec_dict(spec)},
            "preprocessing": {
                "fit": opts.fit,
                "size": spec.image_size,
                "resample": "bicubic",
                "mean": list(adapter.image_mean),
                "std": list(adapter.image_std),
                "exif": "rotation applied",
                "alpha": "composited over white",
                "high_bit_depth": "scaled to 8-bit",
                "png": "reconstruction from the codes" if opts.png == "recon" else "resized input",
            },
            "options": asdict(opts),
            "counts": {"total": {"rows": stats["rows"]}, "inputs": {k: v for k, v in stats.items() if k != "rows"}},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    output.register(entries)
    return {"name": name, "folder": str(output.dataset_dir / name), "kind": kind, "fit": opts.fit,
            "size": spec.image_size, "stats": stats, "swept": output.swept,
            "dropped": output.dropped}


def _spec_dict(spec: Any) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in ("model_type", "num_image_tokens", "codebook_size", "image_size")}


def _note(stats: dict[str, Any], image: Any, size: int) -> None:
    w, h = image.size
    stats["modes"][image.mode] = stats["modes"].get(image.mode, 0) + 1
    stats["non_square"] += int(w != h)
    stats["upscaled"] += int(min(w, h) < size)
    stats["min_side"] = min(w, h) if stats["min_side"] is None else min(stats["min_side"], w, h)
    stats["max_side"] = max(w, h) if stats["max_side"] is None else max(stats["max_side"], w, h)


def _input_pngs(adapter: Any, batch: list[tuple[str, Any]], opts: EncodeOptions) -> list[Any]:
    """The images exactly as the tokenizer saw them (cropped / padded, resized), back in 8-bit."""
    import numpy as np
    import torch
    from PIL import Image

    pixels = adapter.pixels([image for _, image in batch], fit=opts.fit).float().cpu()
    mean = torch.tensor(adapter.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(adapter.image_std).view(1, 3, 1, 1)
    arrays = ((pixels * std + mean).clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def describe(result: dict[str, Any], out: TextIO | None = None, index_file: str = "index") -> None:
    out = out or sys.stdout
    stats = result["stats"]
    modes = ", ".join(f"{m} {n}" for m, n in sorted(stats["modes"].items()))
    print(f"unigap encode: {result['name']}: {stats['rows']} generation rows from a {result['kind']} source; "
          f"images {result['fit']}-fitted to {result['size']}px ({stats['non_square']} non-square, "
          f"{stats['upscaled']} upscaled; modes: {modes})", file=out)
    print(f"  wrote {result['folder']}; {index_file}: {result['name']}", file=out)
    if result.get("dropped"):
        print(f"  {index_file}: removed {', '.join(result['dropped'])} (written by the replaced build)", file=out)
    if result.get("swept"):
        print(f"  removed {result['swept']} leftover folder(s) of interrupted builds of {result['name']}", file=out)
