"""Host-neutral training samples, and the interface a host implements to store them.

unigap's builders, replay and examples produce :class:`GenSample` (prompt ->
an image to generate), :class:`PairSample` (prompt -> a preferred and a
dispreferred image) and :class:`UndSample` (image + question -> text answer).
How those become rows on disk, and how a folder names its datasets, is the
host's business: each host folder (``unigap.host.<name>``) provides one
:class:`DatasetFormat`, which the command line hands to the builders.

Image paths are strings as the rows should hold them (relative to the host's
dataset directory, or absolute); each generated image is a PNG with its
``.codes.npy`` sidecar (:mod:`unigap.codes`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union


@dataclass
class GenSample:
    """An image to generate from a prompt (generation SFT)."""

    prompt: str
    image: str
    meta: dict[str, Any] | None = None


@dataclass
class PairSample:
    """Two images for one prompt, ``chosen`` preferred over ``rejected`` (DPO)."""

    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] | None = None


@dataclass
class UndSample:
    """A question about an image and its text answer (understanding SFT)."""

    image: str
    question: str
    answer: str
    meta: dict[str, Any] | None = None


Sample = Union[GenSample, PairSample, UndSample]


class DatasetFormat(ABC):
    """How one host stores samples as rows and finds a folder's datasets (its index file)."""

    #: the file in a dataset directory that names its datasets
    index_file: str

    @abstractmethod
    def render(self, sample: Sample) -> dict[str, Any]:
        """One row in the host's format (with the sample's metadata, if any, under ``unigap.rowmeta.META_KEY``)."""

    @abstractmethod
    def entry(self, file_name: str, ranking: bool = False) -> dict[str, Any]:
        """The index entry of a data file (relative to the dataset directory); ``ranking`` for pairs."""

    @abstractmethod
    def read_index(self, dataset_dir: Path) -> dict[str, Any]:
        """The index of ``dataset_dir`` ({} when there is none); a clear error when it is unreadable."""

    @abstractmethod
    def write_index(self, dataset_dir: Path, index: dict[str, Any]) -> None:
        """Replace the index of ``dataset_dir`` atomically."""
