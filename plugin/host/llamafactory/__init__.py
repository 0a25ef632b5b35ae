"""LLaMA-Factory (0.9.x) as unigap's host: one file per extension point.

``unigap._bootstrap`` (a one-line ``.pth``) calls :func:`on_host_module_loaded`
right after each hooked LLaMA-Factory module has executed; the handler of that
module (one file here each) then extends it in place, so an unmodified
``llamafactory-cli`` gains, for every registered model family:

==========================================  ==========================================================
host module                                 file here: what it adds
==========================================  ==========================================================
``llamafactory.data.mm_plugin``             ``mm_plugin.py``: the ``unigap_<family>`` multimodal plugin
``llamafactory.data.template``              ``template.py``: one template per family (``template: <family>``)
``llamafactory.data.processor``             ``processor.py``: DPO rows whose answers are two images;
                                            no generated image cut by ``cutoff_len``
``llamafactory.data.loader``                ``data_capture.py``: the run's dataset processor (replay
                                            tokenizes its rows with it)
``llamafactory.hparams.parser``             ``args.py``: unigap's YAML keys, "did you mean"
``llamafactory.model.model_utils.visual``   ``freeze.py``: freeze groups and LoRA targets per family
``llamafactory.model.loader``               ``freeze.py``: the image tokenizer is always frozen
``llamafactory.train.sft.workflow``         ``trainer_sft.py``: the SFT trainer (codes + text loss)
``llamafactory.train.dpo.trainer``          ``trainer_dpo.py``: the DPO trainer (family log-probs)
==========================================  ==========================================================

Also here: ``curriculum.py`` (the curriculum sampler and replay inside the
Trainer), ``datasets.py`` (the rows and ``dataset_info.json`` unigap's builders
write, in the host's sharegpt format) and ``recipes.py`` (training YAML).
Nothing else in unigap imports ``llamafactory``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

#: hooked host module -> the file of this folder whose ``on_loaded(module)`` extends it
HANDLERS: dict[str, str] = {
    "llamafactory.data.mm_plugin": "mm_plugin",
    "llamafactory.data.template": "template",
    "llamafactory.data.processor": "processor",
    "llamafactory.data.loader": "data_capture",
    "llamafactory.hparams.parser": "args",
    "llamafactory.model.model_utils.visual": "freeze",
    "llamafactory.model.loader": "freeze",
    "llamafactory.train.sft.workflow": "trainer_sft",
    "llamafactory.train.dpo.trainer": "trainer_dpo",
}


def on_host_module_loaded(module) -> None:
    name = HANDLERS.get(module.__name__)
    if name is None:
        return
    try:
        importlib.import_module(f"{__name__}.{name}").on_loaded(module)
    except Exception as err:  # never break the host for users who do not use unigap
        where = traceback.extract_tb(err.__traceback__)[-1]
        print(
            f"[unigap] could not extend {module.__name__}: {type(err).__name__}: {err} "
            f"({os.path.basename(where.filename)}:{where.lineno}). unigap's templates/trainers may be missing; "
            "set UNIGAP_DISABLE=1 to run LLaMA-Factory without unigap.",
            file=sys.stderr,
        )
