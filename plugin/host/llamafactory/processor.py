"""``llamafactory.data.processor``: DPO rows whose two answers are different images, and a check
that ``cutoff_len`` cut no image of any row.

The host gives a pairwise row's chosen and rejected answers one shared
``images`` list; for a unified model it is split here into the prompt's images,
the chosen answer's and the rejected answer's (in that order in the row).
"""

from __future__ import annotations

from .common import HostDataError, PairImages, brief, count_images


def _owned(processor) -> bool:
    # imported here: the host may load its processor module before its mm_plugin module
    from .mm_plugin import UnifiedImagePlugin

    return isinstance(processor.template.mm_plugin, UnifiedImagePlugin)


def on_loaded(mod) -> None:
    pairwise = mod.PairwiseDatasetProcessor
    encode = pairwise._encode_data_example

    def _encode_data_example(self, prompt, response, system, tools, images, videos, audios):
        if _owned(self) and images and len(response) >= 2:
            k, c = count_images(prompt), count_images(response[:1])
            r = count_images(response[1:2])
            if c or r:
                if len(images) != k + c + r:
                    raise HostDataError(
                        f"a DPO row has {len(images)} images but {k} prompt + {c} chosen + {r} rejected "
                        f"placeholders; list the prompt's images, then the chosen's, then the rejected's: "
                        f"{brief(prompt + response[:2])}"
                    )
                shared = list(images[:k])
                images = PairImages(
                    images,
                    {id(response[0]): shared + list(images[k : k + c]), id(response[1]): shared + list(images[k + c :])},
                )
        return encode(self, prompt, response, system, tools, images, videos, audios)

    pairwise._encode_data_example = _encode_data_example

    def checked(cls, keys):
        preprocess = cls.preprocess_dataset

        def preprocess_dataset(self, examples):
            out = preprocess(self, examples)
            if _owned(self):
                for key in keys:
                    for ids in out.get(key, []):
                        self.template.mm_plugin.check_row(ids, self.tokenizer, self.data_args.cutoff_len)
            return out

        cls.preprocess_dataset = preprocess_dataset

    checked(mod.SupervisedDatasetProcessor, ("input_ids",))
    checked(pairwise, ("chosen_input_ids", "rejected_input_ids"))
