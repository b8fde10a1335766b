# Two commands: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps

.PHONY: demo console monitor test lint typecheck unit integration bench schemas docs scrapyd clean

$(STAMPS)/system: Makefile
	@mkdir -p $(STAMPS)
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	missing=; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	{ command -v clickhouse-server >/dev/null 2>&1 || test -x /usr/sbin/clickhouse-server; } \
		|| missing="$$missing clickhouse-server"; \
	{ command -v rabbitmq-server >/dev/null 2>&1 || test -x /usr/sbin/rabbitmq-server; } \
		|| missing="$$missing rabbitmq-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
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

# The BigQuery emulator the tests start (tests/bqfixtures.py): local-bigquery needs
# Python >= 3.13, so it gets its own venv. Python 3.13/3.14 is taken from PATH, else from
# pyenv's versions; without one this fails (no fallback: the other emulator on PyPI,
# bqemulator, has no insertId dedup and would make the dedup tests meaningless).
# DuckDB cannot download its extensions here: they come as wheels, pinned to duckdb 1.5.5.
BQEMU := .bqemu
BQEMU_PACKAGES := local-bigquery==0.3.2 duckdb==1.5.5 duckdb-extensions==1.5.5 \
	duckdb-extension-ducklake==1.5.5 duckdb-extension-icu==1.5.5 duckdb-extension-spatial==1.5.5
$(STAMPS)/bqemulator:
	@mkdir -p $(STAMPS)
	@py=; for candidate in $$(command -v python3.13 python3.14 2>/dev/null) \
		$$(ls -d "$$(pyenv root 2>/dev/null)"/versions/3.1[34]*/bin/python 2>/dev/null); do \
		if "$$candidate" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then \
			py=$$candidate; break; fi; \
	done; \
	if [ -z "$$py" ]; then \
		echo "The BigQuery emulator (local-bigquery) needs Python >= 3.13: none on PATH or" \
			"under pyenv. Install one (e.g. pyenv install 3.13) and run make again." >&2; \
		exit 1; \
	fi; \
	echo "BigQuery emulator venv $(BQEMU) with $$py"; \
	rm -rf $(BQEMU) && "$$py" -m venv $(BQEMU) && \
	$(BQEMU)/bin/python -m pip install -q --upgrade pip && \
	$(BQEMU)/bin/python -m pip install -q $(BQEMU_PACKAGES)
	@home=$$(mktemp -d) && HOME=$$home $(BQEMU)/bin/python -c 'import duckdb_extensions as d; \
		[d.import_extension(n) for n in ("ducklake", "icu", "spatial")]'; \
		status=$$?; rm -rf "$$home"; exit $$status
	@touch $@

# The main jobs on embedded defaults, no external service: sandbox price API + `prices`
# spider; the hydra (controller, regions) on a private redis-server; an FTP channel.
demo: $(STAMPS)/venv $(STAMPS)/system
	$(PY) -m crawlers.demo

# The scheduler and its console on the demo's tasks, until Ctrl-C: open the printed URL and
# sign in with the printed key; the jobs' metrics go to $(MONITOR)/workers.json, which
# `make monitor` (in another terminal) scrapes for the console's charts.
CONSOLE_PORT ?= 6820
console: $(STAMPS)/venv $(STAMPS)/system
	@mkdir -p $(CURDIR)/.monitor
	$(PY) -m crawlers.demo_scheduler --port $(CONSOLE_PORT) --sd-file $(CURDIR)/.monitor/workers.json \
		--prometheus http://$(or $(PROMETHEUS_LISTEN),127.0.0.1:9090)

# Prometheus and Alertmanager (Debian's packages) in the foreground with monitoring/'s
# configs, their data under $(MONITOR); Ctrl-C stops both. Workers started with
# HYDRA_METRICS_PORT=0 HYDRA_METRICS_SD_FILE=$(MONITOR)/workers.json are scraped.
MONITOR ?= $(CURDIR)/.monitor
PROMETHEUS_LISTEN ?= 127.0.0.1:9090
ALERTMANAGER_LISTEN ?= 127.0.0.1:9093
monitor: $(STAMPS)/system
	@mkdir -p $(MONITOR)
	@sed -e 's|/var/lib/hydra/workers.json|$(MONITOR)/workers.json|' \
		-e 's|rules/hydra.rules.yml|$(CURDIR)/monitoring/rules/hydra.rules.yml|' \
		-e 's|127.0.0.1:9093|$(ALERTMANAGER_LISTEN)|' \
		monitoring/prometheus.yml > $(MONITOR)/prometheus.yml
	@echo "Prometheus http://$(PROMETHEUS_LISTEN), Alertmanager http://$(ALERTMANAGER_LISTEN)"
	@echo "Workers: HYDRA_METRICS_PORT=0 HYDRA_METRICS_SD_FILE=$(MONITOR)/workers.json scrapy crawl prices"
	@prometheus-alertmanager --config.file=$(CURDIR)/monitoring/alertmanager.yml \
		--storage.path=$(MONITOR)/alertmanager --web.listen-address=$(ALERTMANAGER_LISTEN) \
		--cluster.listen-address= & am=$$!; \
	trap 'kill $$am 2>/dev/null; wait $$am' EXIT INT TERM; \
	prometheus --config.file=$(MONITOR)/prometheus.yml --storage.tsdb.path=$(MONITOR)/prometheus \
		--web.listen-address=$(PROMETHEUS_LISTEN)

test: $(STAMPS)/venv $(STAMPS)/system $(STAMPS)/bqemulator lint typecheck
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
	rm -rf $(STAMPS) build *.egg-info output .monitor
