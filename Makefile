# fedguard: the two commands are `make demo` and `make test`; both set everything up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedguard-installed
export FLWR_HOME := $(CURDIR)/.flwr-home

.PHONY: demo test test-fast fuzz lint ui bench clean install browser

install: $(STAMP)

# The browser test drives Debian's Chromium; install it when missing (CI runs as root).
browser:
	@{ command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "noto.*cjk"; } || { \
	  echo "installing Debian chromium and a CJK font for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-noto-cjk; }

# torch goes first, pinned to the CPU build on disk; a range in the project then installs nothing more.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Two workers (CI has 2 cores); a file's tests stay on one worker, so its module fixtures (a
# SuperLink, the Streamlit app) start once; files go out in collection order, the longest
# first (tests/conftest.py HEAVY_FIRST).
test: $(STAMP) browser
	$(BIN)/ruff check .
	FEDGUARD_SCREENSHOT_DIR=$(CURDIR)/artifacts/screenshots $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration and not browser"

# The property tests as a random search (CI replays them deterministically); run it often.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m "not slow and not integration and not browser" \
	  tests/test_fuzz_inputs.py tests/test_manifest.py tests/test_policy_expr.py \
	  tests/test_policy_packs.py tests/test_policy_rules.py tests/test_accounting.py \
	  tests/test_central_dp.py

lint: $(STAMP)
	$(BIN)/ruff check .

# make ui [RUN=<run id>]: the dashboard (on that run), at http://127.0.0.1:8501
ui: $(STAMP)
	@echo "dashboard: http://127.0.0.1:8501/$(if $(RUN),?run=$(RUN),)"
	$(BIN)/streamlit run assistant/app.py --server.address 127.0.0.1 --server.headless true

clean:
	rm -rf .fedguard .flwr-home .pytest_cache .ruff_cache
