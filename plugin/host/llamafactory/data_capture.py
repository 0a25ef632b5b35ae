"""``llamafactory.data.loader``: remember the training set's dataset processor and data arguments.

Replay (C-SFT) adds rows mid-training; they are tokenized by the run's own
converter and processor (:func:`tokenize_rows`), exactly like the original rows.
"""

from __future__ import annotations

from typing import Any

from .common import TRAIN_DATA


def tokenize_rows(rows: list[dict[str, Any]], ranking: bool) -> list[dict[str, Any]]:
    """Rows in the host's format (see ``datasets.py``) -> tokenized rows, through the host's own
    converter and the run's own processor."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import DatasetAttr

    from ...rowmeta import META_KEY
    from .datasets import dataset_info_entry

    data_args, processor = TRAIN_DATA["data_args"], TRAIN_DATA["processor"]
    attr = DatasetAttr("file", dataset_name="unigap_replay")
    attr.join(dataset_info_entry("data.jsonl", ranking=ranking))
    convert = get_dataset_converter(attr.formatting, attr, data_args)
    aligned = [convert({k: v for k, v in row.items() if k != META_KEY}) for row in rows]
    batch = {key: [a[key] for a in aligned] for key in aligned[0]}
    out = processor.preprocess_dataset(batch)
    keys = list(out)
    return [{key: out[key][i] for key in keys} for i in range(len(out[keys[0]]) if keys else 0)]


def on_loaded(mod) -> None:
    get_processor = mod._get_dataset_processor
    preprocess = mod._get_preprocessed_dataset
    latest: dict[str, Any] = {}

    def _get_dataset_processor(data_args, stage, template, tokenizer, processor, do_generate=False):
        out = get_processor(data_args, stage, template, tokenizer, processor, do_generate=do_generate)
        latest.update(processor=out, data_args=data_args, stage=stage)
        return out

    def _get_preprocessed_dataset(dataset, data_args, training_args, stage, template, tokenizer, processor=None,
                                  is_eval=False):
        latest.clear()
        out = preprocess(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval=is_eval)
        if not is_eval and latest:
            TRAIN_DATA.clear()
            TRAIN_DATA.update(latest)
        return out

    mod._get_dataset_processor = _get_dataset_processor
    mod._get_preprocessed_dataset = _get_preprocessed_dataset
