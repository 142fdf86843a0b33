# The README's commands. `make demo` and `make test` both create .venv on first use.
# TORCH_SPEC picks the torch build, e.g. make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test test-all lint test-fast lab clean

$(STAMP): pyproject.toml scripts/bootstrap.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/bootstrap.py gui dev
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/mae3d demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The default suite: everything but the `slow` end-to-end runs (demo, heavy networks, real sweeps);
# every notebook and the napari tests (under Xvfb) are in it. `make test-all` adds the slow ones.
test: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not napari" -x -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache

# JupyterLab on notebooks/ with this environment as the kernel "mae3d" (ipywidgets 8 ships its
# JupyterLab extension, jupytext opens the .py sources). Remote machine: see notebooks/README.md.
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name mae3d --display-name "Python (mae3d)"
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) --no-browser $(LAB_ARGS)
