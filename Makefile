# Two commands: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps

.PHONY: demo test lint typecheck unit integration bench schemas docs scrapyd clean

$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	missing=; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		|| pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; } || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The main job on embedded defaults: sandbox price API + `prices` spider, no Redis needed.
demo: $(STAMPS)/venv
	$(PY) -m crawlers.demo

test: $(STAMPS)/venv $(STAMPS)/system lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMPS)/venv
	$(VENV)/bin/mypy

# Worker vs Scrapy defaults, a tuned and a lean plain spider, 2 processes, an aiohttp ceiling.
bench: $(STAMPS)/venv $(STAMPS)/system
	$(PY) -m benchmarks.throughput --processes 2

# Regenerate docs/schemas/*.json and docs/settings.md from the code.
docs: $(STAMPS)/venv
	$(PY) -m crawlers.models docs/schemas
	$(PY) -m crawlers.docs > docs/settings.md

clean:
	rm -rf $(STAMPS) build *.egg-info output
