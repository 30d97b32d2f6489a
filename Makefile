# Two entry points for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

# pip byte-compiles every file it installs, mostly torch modules that nothing imports, and that
# took much of the install's time. Instead, what rcic and its tests import is compiled once, by
# importing it (benchmarks/results/install_time.txt times the whole make demo).
WARM := copairs.map copairs.matching sklearn.discriminant_analysis sklearn.linear_model \
	sklearn.pipeline pycytominer pyarrow.parquet scipy.optimize scipy.stats matplotlib.pyplot \
	torch.distributed pytest skimage.segmentation skimage.feature skimage.filters \
	cp_measure.featurizer cp_measure.bulk

$(BIN)/rcic: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[dev]'
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import importlib, pkgutil, sys, rcic; \
	[importlib.import_module(m.name) for m in pkgutil.walk_packages(rcic.__path__, 'rcic.')]; \
	[importlib.import_module(m) for m in sys.argv[1:]]" $(WARM)
	touch $(BIN)/rcic

setup: $(BIN)/rcic

demo: setup
	$(BIN)/rcic demo --out demo-run

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo-run
