# unigap: two commands for people (README): `make demo` and `make test`.
# Both create .venv (idempotent, fast when nothing changed), install LLaMA-Factory,
# unigap (editable) and the test tools, and build the curriculum examples' self-play data
# with the embedded default model (models/shapes-janus, committed: nothing to build).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.unigap-installed
DEFAULT := models/shapes-janus
SHAPES_SHOWO := models/shapes-showo
# `make demo` / `make evidence` run on MODEL: the embedded Janus (default) or the embedded Show-o
MODEL  := $(DEFAULT)
DEMO_YAML = $(if $(filter %shapes-showo %shapes-showo/,$(MODEL)),yaml_examples/loop_shapes_showo.yaml,$(if $(filter %shapes-janus %shapes-janus/,$(MODEL)),yaml_examples/loop_shapes.yaml,))
EXDATA := outputs/examples/data/dataset_info.json
SHOWO  := models/tiny-showo
SHOWODATA := outputs/examples-showo/data/dataset_info.json
PIP    := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip

.PHONY: setup test demo demo-model demo-variants demo-one-round evidence evidence-compare bench clean

setup: $(STAMP) $(DEFAULT)/config.json $(SHAPES_SHOWO)/config.json $(EXDATA) $(SHOWODATA)

$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	# PyPI's torchvision/torchaudio are CUDA-only builds that break next to a CPU torch;
	# the script explains, and changes nothing where torch has CUDA.
	$(BIN)/python scripts/fix_cpu_torch_extras.py
	$(BIN)/llamafactory-cli version > /dev/null
	touch $@

# The embedded models: a tiny Janus (the default) and a tiny Show-o trained on ShapesWorld
# (scripts/train_default.py [--family showo], under an hour each on CPU), committed to the repository.
# Nothing builds them here: a checkout without them is broken.
$(DEFAULT)/config.json $(DEFAULT)/model.safetensors $(SHAPES_SHOWO)/config.json:
	@echo "error: $(@D) is missing: it is committed to the repository (git checkout -- $(@D)," >&2
	@echo "       or rebuild it with scripts/train_default.py --family $(if $(findstring showo,$@),showo,janus))" >&2
	@exit 1

# The self-play dataset of the curriculum examples (gap_csft.yaml, gap_dpo_curriculum.yaml): the default
# model's own images, judged by itself and built by unigap, with the discard pool that replay retries.
$(EXDATA): $(STAMP) $(DEFAULT)/config.json $(DEFAULT)/model.safetensors yaml_examples/selfplay.yaml yaml_examples/prompts/shapes.jsonl
	rm -rf outputs/examples
	$(BIN)/unigap selfplay yaml_examples/selfplay.yaml output_dir=outputs/examples/selfplay progress=false
	$(BIN)/unigap build sft outputs/examples/selfplay --out outputs/examples/data --name gap_selfplay --with-und
	$(BIN)/unigap build dpo outputs/examples/selfplay --out outputs/examples/data --name gap_selfplay_dpo

# The Show-o examples (yaml_examples/showo_*.yaml): a tiny RANDOM Show-o (offline, seconds) and its own
# self-play data. A random model says yes rarely (P(yes) about 0.03-0.3), so the build's threshold is set
# to split its prompts between accepted images and a discard pool for replay; the data shows the
# formats and runs the recipes, it is not meant to improve anything.
$(SHOWO)/config.json: $(STAMP) plugin/models/showo/tiny.py
	$(BIN)/unigap tiny-model --family showo --out $(SHOWO) --force

$(SHOWODATA): $(SHOWO)/config.json yaml_examples/showo_selfplay.yaml yaml_examples/prompts/shapes.jsonl
	rm -rf outputs/examples-showo
	$(BIN)/unigap selfplay yaml_examples/showo_selfplay.yaml output_dir=outputs/examples-showo/selfplay num_candidates=2 steps=8 progress=false
	$(BIN)/unigap build sft outputs/examples-showo/selfplay --out outputs/examples-showo/data --name showo_selfplay --with-und --threshold 0.15
	$(BIN)/unigap build dpo outputs/examples-showo/selfplay --out outputs/examples-showo/data --name showo_selfplay_dpo --any-outcome

test: setup
	$(BIN)/python -m pytest tests --durations=25

# The whole loop on an embedded model: 2 rounds of self-play -> build -> llamafactory-cli train ->
# held-out evaluation (own judge + exact oracle); rerun to resume (outputs/loop/shapes-janus).
# `make demo MODEL=models/shapes-showo`: the same loop on the embedded Show-o (outputs/loop/shapes-showo).
demo: demo-model setup
	$(BIN)/unigap loop $(DEMO_YAML)

demo-model:
	@test -n "$(DEMO_YAML)" || { echo "error: no demo loop for MODEL=$(MODEL) (models/shapes-janus or models/shapes-showo)" >&2; exit 2; }

# One round of C-SFT and of DPO as loops of their own (the SFT round is round 1 of `make demo`).
demo-variants: setup
	$(BIN)/unigap loop yaml_examples/loop_shapes_csft.yaml
	$(BIN)/unigap loop yaml_examples/loop_shapes_dpo.yaml

# The earlier one-round demo: SFT, C-SFT and DPO side by side on one page (outputs/demo/summary.md).
demo-one-round: setup
	$(BIN)/python scripts/demo.py

# The paper's claims on ShapesWorld (several seeds, CIs) for MODEL (outputs/evidence/<model name>; rerun to resume).
evidence: setup
	$(BIN)/unigap evidence --model $(MODEL) --out outputs/evidence/$(notdir $(patsubst %/,%,$(MODEL))) --seeds 0,1,2

# Both embedded models' evidence, then one table per claim, Janus vs Show-o (outputs/evidence/compare/compare.md).
evidence-compare: setup
	$(BIN)/unigap evidence --model $(DEFAULT) --out outputs/evidence/shapes-janus --seeds 0,1,2
	$(BIN)/unigap evidence --model $(SHAPES_SHOWO) --out outputs/evidence/shapes-showo --seeds 0,1,2
	$(BIN)/unigap evidence-compare outputs/evidence/shapes-janus outputs/evidence/shapes-showo --out outputs/evidence/compare

bench: setup
	$(BIN)/python benchmarks/bench_gen_training.py
	$(BIN)/python benchmarks/bench_selfplay.py
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_curriculum.py
	$(BIN)/python benchmarks/bench_showo.py --quick

# models/shapes-janus is committed and never removed; models/tiny-janus is what older checkouts built
# (tests and benchmarks/bench_curriculum.py now build their tiny random model in a temp dir).
clean:
	rm -rf $(VENV) models/tiny-janus saves outputs
