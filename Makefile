# Set-up is idempotent: the virtualenv is (re)built only when pyproject.toml or
# constraints.txt change. PYTHON must be 3.10+ (3.11 takes the CPU torch wheel on this
# project's machines).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.slimbench-installed

.PHONY: demo test lint benchmark reference clean browser

# The report test renders report.html in headless Chromium (Debian's `chromium` package).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
CHROMIUM := $(shell command -v chromium || command -v chromium-browser || command -v google-chrome)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,lmeval,ray,openvino,ctranslate2,genai]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/slimbench demo

browser:
ifeq ($(CHROMIUM),)
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium >/dev/null
endif

# ruff first, so that pytest's summary is the last line of the output
test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Timings of the key paths with pytest-benchmark (not part of `make test`). Compare against a
# saved run: make benchmark BENCH_ARGS="--benchmark-compare --benchmark-compare-fail=median:10%"
benchmark: $(STAMP)
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rebuild the embedded corpus, evaluation sets and reference checkpoint (maintainers only;
# the outputs are committed). About 30 minutes on 2 cores.
reference: $(STAMP)
	$(PY) scripts/build_corpus.py
	$(PY) scripts/build_mc_set.py
	$(PY) scripts/train_reference.py
	$(PY) scripts/write_model_card.py

clean:
	rm -rf $(VENV) build *.egg-info runs
