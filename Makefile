# Swiftex: `make up` runs everything, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PORT ?= 8000

.PHONY: up test install services db bench clean-venv

## up: install, check/start services, create + migrate the database, print a demo API key, run every process
up: db
	@$(PY) manage.py demo_organization | tee var/demo-key.txt | sed 's/^/[demo] /'
	@echo "[demo] try: curl -s -XPOST http://127.0.0.1:$(PORT)/api/v1/leads -H \"Authorization: Bearer $$(tail -1 var/demo-key.txt)\" -H 'Content-Type: application/json' -d '{\"name\":\"Ana\",\"phone\":\"+14155550123\",\"consent\":true}'"
	@echo "[demo] starting web, relay, worker lanes and scheduler; Ctrl-C stops them all"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile

## test: the whole suite against real PostgreSQL, Redis and RabbitMQ
test: install services
	$(VENV)/bin/pytest

## bench: the ingest benchmark (writes bench/results/)
bench: db
	$(PY) bench/ingest.py

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
