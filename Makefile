# The two README commands: `make demo` (main job on the embedded sample data) and `make test`.
# Both bootstrap a local virtual environment in .venv on first use, with the exact versions of
# constraints.txt (the lock the suite passed with): `make demo` installs only what the main job
# needs (the package), `make test` adds the dev extra (test tools, notebooks, PySpark).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := constraints.txt
PIP    := $(BIN)/python -m pip install --quiet --constraint $(LOCK)
MAIN   := $(VENV)/.installed-main
DEV    := $(VENV)/.installed-dev
OUT    ?= out/demo

.PHONY: demo test venv lint bench lock clean

venv: $(DEV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3

$(MAIN): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e .
	touch $@

$(DEV): pyproject.toml $(LOCK) | $(BIN)/python
	$(PIP) -e ".[dev]"
	touch $@ $(MAIN)

demo: $(MAIN)
	$(BIN)/crmkit demo --out $(OUT)

test: $(DEV)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(DEV)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/run.py

# after a green `make test` with newer versions: record them as the lock
lock: $(DEV)
	{ sed -n '1,3p' $(LOCK); $(BIN)/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) out build *.egg-info
