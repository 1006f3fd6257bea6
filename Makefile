PY ?= python3

.PHONY: install demo test test-all lint bench

# torch is pinned to a CPU-only release so a fresh machine does not pull a multi-GB CUDA build.
install:
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"

demo: install
	gradfit demo --out demo-output

# the default tier; the slow statistical checks run with test-all (README: Tests)
test: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow" tests

test-all: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q tests

lint:
	$(PY) -m ruff check src tests benchmarks

bench:
	$(PY) benchmarks/nist_strd.py
	$(PY) benchmarks/gradient_cost.py
	$(PY) benchmarks/batch.py --max-b 10000
