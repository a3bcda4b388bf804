# Swiftex: `make up` runs everything, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PORT ?= 8000
# Every process `make up` starts (web workers, lanes, relay, scheduler) writes its
# Prometheus samples here and the web's /metrics merges them; emptied at each
# `make up`, so counters start from zero with the processes (docs/observability.md).
METRICS_DIR ?= $(CURDIR)/var/prometheus

.PHONY: up test install services browser db bench bench-followups bench-crmsync bench-analytics bench-imports chaos clean-venv

# `make up FAKE_PROVIDERS=1`: also run the fake provider server (fakes/) on
# 127.0.0.1:8900 and point OpenAI, WhatsApp, Twilio, HubSpot and the Graph API (Meta Lead Ads) at it, with
# matching demo credentials, so a lead gets a (fake) greeting and reaches a
# (fake) CRM with nothing external.
FAKE_PROVIDERS ?= 0
FAKES_PORT ?= 8900
PROCFILE := Procfile
ifeq ($(FAKE_PROVIDERS),1)
export OPENAI_BASE_URL ?= http://127.0.0.1:$(FAKES_PORT)/openai/v1
export OPENAI_API_KEY ?= fake-openai-key
export WHATSAPP_API_URL ?= http://127.0.0.1:$(FAKES_PORT)/whatsapp/v23.0
export TWILIO_API_URL ?= http://127.0.0.1:$(FAKES_PORT)/twilio
export WHATSAPP_PHONE_NUMBER_ID ?= 100000000000001
export WHATSAPP_ACCESS_TOKEN ?= fake-whatsapp-token
export WHATSAPP_APP_SECRET ?= fake-app-secret
export WHATSAPP_VERIFY_TOKEN ?= fake-verify-token
export TWILIO_ACCOUNT_SID ?= AC00000000000000000000000000000000
export TWILIO_AUTH_TOKEN ?= fake-auth-token
export TWILIO_FROM_NUMBER ?= +15550002222
export HUBSPOT_API_URL ?= http://127.0.0.1:$(FAKES_PORT)/hubspot
export HUBSPOT_ACCESS_TOKEN ?= fake-hubspot-token
export GRAPH_API_URL ?= http://127.0.0.1:$(FAKES_PORT)/graph/v23.0
export META_APP_SECRET ?= $(WHATSAPP_APP_SECRET)
export META_VERIFY_TOKEN ?= fake-verify-token
export PUBLIC_BASE_URL ?= http://127.0.0.1:$(PORT)
PROCFILE := var/Procfile.fakes
endif

## up: install, check/start services, create + migrate the database, print a demo API key, run every process
up: db
	@$(PY) manage.py demo_organization | tee var/demo-key.txt | sed 's/^/[demo] /'
	@echo "[demo] try: curl -s -XPOST http://127.0.0.1:$(PORT)/api/v1/leads -H \"Authorization: Bearer $$(tail -1 var/demo-key.txt)\" -H 'Content-Type: application/json' -d '{\"name\":\"Ana\",\"phone\":\"+14155550123\",\"consent\":true}'"
	@echo "[demo] starting web, relay, worker lanes and scheduler; Ctrl-C stops them all"
ifeq ($(FAKE_PROVIDERS),1)
	@echo "[demo] fake providers on 127.0.0.1:$(FAKES_PORT): see what was sent with curl -s http://127.0.0.1:$(FAKES_PORT)/_fake/requests?provider=whatsapp, the CRM with curl -s http://127.0.0.1:$(FAKES_PORT)/_fake/hubspot/contacts"
	@{ cat Procfile; echo "fakes: exec python -m fakes --port $(FAKES_PORT) --webhook-url http://127.0.0.1:$$PORT --whatsapp-app-secret $$WHATSAPP_APP_SECRET --twilio-auth-token $$TWILIO_AUTH_TOKEN"; } > $(PROCFILE)
endif
	@rm -rf "$(METRICS_DIR)" && mkdir -p "$(METRICS_DIR)"
	PROMETHEUS_MULTIPROC_DIR="$(METRICS_DIR)" PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f $(PROCFILE) -d $(CURDIR)

## test: the whole suite against real PostgreSQL, Redis and RabbitMQ (and real Chromium for the browser tests)
test: install services browser
	$(VENV)/bin/pytest

## browser: Debian's chromium for the browser tests (Playwright drives it; nothing is downloaded by Playwright)
browser:
	@scripts/browser.sh

## bench: the ingest benchmark (writes bench/results/)
bench: db
	$(PY) bench/ingest.py

## bench-followups: thousands of due follow-ups beside new leads; the greeting's p99 must stay within 10% (writes bench/results/followups.json)
bench-followups: db
	$(PY) bench/followups.py

## bench-analytics: the dashboard's queries over 1,000,000 seeded leads and the analytics consumer's throughput (writes bench/results/analytics.json)
bench-analytics: db
	$(PY) bench/analytics.py

## bench-crmsync: 5,000 leads in a minute synced to a fake HubSpot allowing 10 req/s (writes bench/results/crmsync.json)
bench-crmsync: db
	$(PY) bench/crm.py

## bench-imports: live leads at 1,000/min alone and during a 10,000-row CSV import (writes bench/results/imports.json)
bench-imports: db
	$(PY) bench/imports.py

## chaos: faults during a steady 5,000 leads/min run; 0 lost, 0 duplicated (writes bench/results/chaos.json)
chaos: db
	$(PY) bench/chaos.py

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	@touch $@

services:
	@scripts/services.sh

db: install services
	@mkdir -p var
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --noinput

clean-venv:
	rm -rf $(VENV)
