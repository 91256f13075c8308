# leakhunter: `make demo` runs the main job end to end on synthetic data; `make test` runs the tests.
# Both create .venv on first use. torch==2.13.0 is installed first and explicitly: a bare `torch`
# requirement would pull a multi-GB CUDA build on a machine without one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: setup demo test test-slow lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[train,dev,ray]'
	touch $@

demo: setup
	rm -rf $(DEMO)
	$(BIN)/leak data synth $(DEMO)/corpus --scenario sites --sites 12 --files-per-class 40 --duration 10 --seed 0
	$(BIN)/leak data build $(DEMO)/corpus -o $(DEMO)/data.h5 --workers 2
	$(BIN)/leak data check $(DEMO)/data.h5
	$(BIN)/leak train --data $(DEMO)/data.h5 --out $(DEMO)/run --mode binary --cv 5 --epochs 20 \
		--channels 8,16,32 --hidden 64 --augment gain,tilt,mix,mask --reference sensor
	$(BIN)/leak eval $(DEMO)/run/best.pth --data $(DEMO)/data.h5 --split test
	$(BIN)/leak export $(DEMO)/run/best.pth
	$(BIN)/leak info $(DEMO)/run/best.onnx
	$(BIN)/leak data files $(DEMO)/data.h5 --split test -o $(DEMO)/test_files.csv
	$(BIN)/leak reference build $(DEMO)/test_files.csv --model $(DEMO)/run/best.onnx -o $(DEMO)/references.json
	$(BIN)/leak predict $(DEMO)/test_files.csv --model $(DEMO)/run/best.onnx --reference $(DEMO)/references.json \
		--out $(DEMO)/scores.csv --sensitivity high --timeline

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m pytest benchmarks -q --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

clean:
	rm -rf $(DEMO) .pytest_cache .benchmarks
