# PIVOT: two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_FAST_DIR ?= data/demo-fast
# Threads per process; 2-core machine by default.
export OMP_NUM_THREADS ?= 2
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine with a DataLoader worker, spinning threads
# oversubscribe the cores and make training steps 2-15x slower and erratic (measured; see benchmarks/README.md).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: venv demo demo-fast demo-long test test-slow bench lint clean

$(STAMP): pyproject.toml requirements/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU wheel first, pinned, so nothing below can pull a CUDA build (GPU users: README "GPU install").
	$(PIP) install -r requirements/cpu.txt
	$(PIP) install -c requirements/cpu.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/run_demo.py --work-dir $(DEMO_DIR)

# the 15-minute first run: fewer scans and epochs, a lower held-out CPM (benchmarks/README.md); model in
# bundle/models/demo_fast/
demo-fast: $(STAMP)
	$(PY) scripts/run_demo.py --fast --work-dir $(DEMO_FAST_DIR)

# the CPU long profile (bundle/configs/cpu_long.yaml: 72 epochs, under an hour of training on 2 cores) on make demo's
# own scans (cached in DEMO_DIR); model in bundle/models/cpu_long/, outputs in DEMO_DIR/results_cpu_long/
demo-long: $(STAMP)
	$(PY) scripts/run_demo.py --long --work-dir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check pivot_monai tests scripts benchmarks
	$(VENV)/bin/ruff format --check pivot_monai tests scripts benchmarks

clean:
	rm -rf $(VENV) data/demo data/demo-fast
