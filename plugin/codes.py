"""Generated images on disk: a PNG for people and tools, plus its exact codes.

``path/to/img.png`` is paired with ``path/to/img.codes.npy``: a 1-D integer
array of the image's discrete codes, exactly as they came out of the generator
(or out of the model's own VQ encoder for user images).  Training reads the
codes, never re-encodes the pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import UnigapError
from .fsutil import write_bytes_atomic


class CodeSpec(Protocol):
    """What the checks need to know of a model (a family's ``ModelSpec`` has it)."""

    num_image_tokens: int
    codebook_size: int
    image_size: int

CODES_SUFFIX = ".codes.npy"


class GenImageError(UnigapError):
    """A generation target (PNG + codes) is missing, unreadable or does not fit the model."""


def codes_path_for(image_path: str | os.PathLike) -> Path:
    """``img.png`` -> ``img.codes.npy`` (the sidecar that holds the exact codes)."""
    path = Path(image_path)
    return path.with_name(path.stem + CODES_SUFFIX)


def image_path_of(item: Any) -> str | None:
    """The file path of a host image entry (a path or ``{"path": ...}``), else None."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, dict) and isinstance(item.get("path"), str) and not item.get("bytes"):
        return item["path"]
    return None


def save_gen_image(image_path: str | os.PathLike, image: Any, codes: Any) -> tuple[Path, Path]:
    """Write ``image`` (PIL) as PNG and ``codes`` beside it, each atomically (codes first)."""
    path = Path(image_path)
    if path.suffix.lower() != ".png":
        raise GenImageError(f"generated images are stored as .png, got {path}")
    array = np.asarray(codes)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise GenImageError(f"codes must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.int32), allow_pickle=False)
    sidecar = codes_path_for(path)
    write_bytes_atomic(sidecar, buffer.getvalue())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
    return path, sidecar


def load_codes(path: str | os.PathLike, spec: "CodeSpec | None" = None) -> np.ndarray:
    """Read and check a ``.codes.npy`` file; ``spec`` adds length and range checks."""
    path = Path(path)
    if not path.is_file():
        raise GenImageError(f"codes file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # corrupt, truncated, pickled...
        raise GenImageError(f"codes file {path} is not a readable .npy array ({err})") from None
    if not np.issubdtype(array.dtype, np.integer):
        raise GenImageError(f"codes file {path} holds {array.dtype} values, expected integers")
    array = array.reshape(-1).astype(np.int64)
    if spec is not None:
        if array.size != spec.num_image_tokens:
            raise GenImageError(
                f"codes file {path} has {array.size} codes but the model draws {spec.num_image_tokens} per image "
                f"({spec.image_size}px); was it made for another model?"
            )
        if array.size and (array.min() < 0 or array.max() >= spec.codebook_size):
            bad = int(array[(array < 0) | (array >= spec.codebook_size)][0])
            raise GenImageError(
                f"codes file {path} holds code {bad}, outside the model's codebook [0, {spec.codebook_size})"
            )
    return array


def check_png(path: str | os.PathLike) -> None:
    """The image file exists and its header is a readable image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise GenImageError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise GenImageError(f"image file {path} is not a readable image ({err})") from None


def load_gen_target(item: Any, spec: "CodeSpec") -> np.ndarray:
    """The exact codes of one generation target named by a host image entry."""
    path = image_path_of(item)
    if path is None:
        raise GenImageError(
            "an image in an assistant turn is a generation target and must be a file path with a "
            f"{CODES_SUFFIX} sidecar; got {type(item).__name__}"
        )
    check_png(path)
    return load_codes(codes_path_for(path), spec)
