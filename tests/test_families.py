"""The family seam: a new family is one folder under ``unigap.models``; everything else picks it up.

A toy family (a folder written into a temporary directory and put on ``unigap.models``' search
path, the way a real one would sit beside ``janus/``) adds its own generation parameter; the
registry, self-play's keys, the host's ``replay_*`` YAML keys and ``unigap generate``'s options
all grow by it without a line changed elsewhere.
"""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

TOY = '''
from dataclasses import dataclass, field
from typing import ClassVar

from unigap.models.base import FamilyError, SamplingParams
from unigap.models.janus import JanusAdapter


@dataclass
class ToySampling(SamplingParams):
    steps: int = field(default=12, metadata={"help": "parallel decoding steps"})
    cfg_scale: float = field(default=2.0, metadata={"help": "guidance"})

    def validate(self, prefix=""):
        if self.steps < 1:
            raise FamilyError(f"{prefix}steps must be >= 1, got {self.steps}")


class ToyAdapter(JanusAdapter):
    family: ClassVar[str] = "toy"
    template: ClassVar[str] = "toy"
    sampling = ToySampling

    @classmethod
    def matches(cls, config):
        model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        return model_type == "toy"
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    import unigap.models as models

    folder = tmp_path / "families" / "toy"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path / "families")])
    monkeypatch.setattr(models, "_CLASSES", None)
    # the folder is found as unigap.models.toy, exactly like a folder beside janus/
    yield models
    monkeypatch.setattr(models, "_CLASSES", None)


def test_a_new_folder_is_a_new_family(toy_family):
    families = toy_family.supported_types()
    assert families == ["janus", "showo", "toy"]
    toy = toy_family.family_named("toy")
    assert toy_family.adapter_class_for({"model_type": "toy"}) is toy
    assert toy_family.adapter_class_for({"model_type": "janus"}).family == "janus"
    with pytest.raises(toy_family.FamilyError, match="no model family 'nope'"):
        toy_family.family_named("nope")


def test_its_generation_keys_reach_selfplay_replay_and_the_command_line(toy_family):
    keys = toy_family.sampling_keys(selfplay_only=True)
    assert "steps" in keys and "cfg_scale" in keys and "greedy" not in keys
    # self-play accepts the new key (checked against the family once the model is known)
    from unigap.selfplay import load_config

    config = load_config(None, ["model_name_or_path=x", "prompts=p.jsonl", "output_dir=o", "steps=8"])
    assert config.sampling == {"steps": 8}
    toy = toy_family.family_named("toy")
    assert config.resolve_sampling(toy).steps == 8 and config.sampling == {"steps": 8, "cfg_scale": 2.0}
    janus = toy_family.family_named("janus")
    bad = load_config(None, ["model_name_or_path=x", "prompts=p.jsonl", "output_dir=o", "steps=8"])
    with pytest.raises(ValueError, match="steps"):
        bad.resolve_sampling(janus)  # a key of another family is refused by name
    # unigap generate grows an option
    from unigap.cli import build_parser

    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "a", "--out", "o", "--steps", "5"])
    assert args.steps == 5 and args.cfg_scale is None


def test_its_replay_keys_reach_the_hosts_yaml(toy_family):
    pytest.importorskip("llamafactory")
    from unigap.host.llamafactory import args

    names = {f.name for f in dataclasses.fields(args._build_arguments())}
    assert {"replay_steps", "replay_cfg_scale", "replay_temperature"} <= names
    assert "replay_greedy" not in names


def test_the_sampling_parameters_are_checked_by_the_family(toy_family):
    toy = toy_family.family_named("toy")
    with pytest.raises(toy_family.FamilyError, match=r"replay_steps must be >= 1, got 0"):
        toy.sampling.from_values({"steps": 0}, prefix="replay_")
    with pytest.raises(toy_family.FamilyError, match=r"steps must be an integer, got 'many'"):
        toy.sampling.from_values({"steps": "many"})
    with pytest.raises(toy_family.FamilyError, match=r"unknown generation key 'step' \(did you mean 'steps'\?\)"):
        toy.sampling.from_values({"step": 3})


def test_an_incomplete_family_is_not_registered(tmp_path, monkeypatch):
    import unigap.models as models

    folder = tmp_path / "families" / "half"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        "from unigap.models.base import UnifiedAdapter\n\n"
        "class HalfAdapter(UnifiedAdapter):\n    family = 'half'\n"
    )
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path / "families")])
    monkeypatch.setattr(models, "_CLASSES", None)
    assert "half" not in models.supported_types()
    monkeypatch.setattr(models, "_CLASSES", None)


def test_replay_takes_the_familys_keys_and_refuses_anothers(toy_family, tmp_path):
    from unigap.replay import ReplayError, resolve_settings

    pool = tmp_path / "discard_pool.jsonl"
    pool.write_text('{"prompt_id": "p0", "prompt": "a red square"}\n')
    base = {"num_candidates": 2, "judge_threshold": 0.5, "judge_question": "Does this image show {prompt}?",
            "seed": 3}
    toy, janus = toy_family.family_named("toy"), toy_family.family_named("janus")
    with pytest.raises(ReplayError, match=r"no value for replay_cfg_scale"):  # the run's value must be known
        resolve_settings({**base, "steps": 4}, "1", str(pool), str(tmp_path), 8, toy.sampling)
    settings = resolve_settings({**base, "steps": 4, "cfg_scale": 1.5}, "1", str(pool), str(tmp_path), 8, toy.sampling)
    assert settings.sampling.steps == 4 and settings.public()["steps"] == 4 and settings.public()["cfg_scale"] == 1.5
    with pytest.raises(ReplayError, match=r"replay_steps: not a replay setting of this model's family"):
        resolve_settings({**base, "steps": 4, "cfg_scale": 3.0, "temperature": 1.0}, "1", str(pool), str(tmp_path), 8,
                         janus.sampling)
    with pytest.raises(ReplayError, match=r"replay_steps must be >= 1, got 0"):
        resolve_settings({**base, "steps": 0, "cfg_scale": 1.5}, "1", str(pool), str(tmp_path), 8, toy.sampling)
