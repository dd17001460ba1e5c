# The two commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test lint setup clean messages

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The demo accounts are user@example.com: the demo issues for that domain only, and its
# issuing CA is name-constrained to it. `PKIPORTAL_MAIL_DOMAINS= make run` lifts both on
# a fresh var/ (`make clean` first: an existing demo CA keeps its constraint).
setup run: export PKIPORTAL_MAIL_DOMAINS ?= example.com
# Links in mail, the OCSP URL and the CRL/CA URLs in the demo's certificates name the
# address it serves at: `make run PORT=8123` (or HOST=...) gives them that port too. The
# demo CA keeps the URLs it was made with: `make clean` before serving elsewhere.
setup run: export PKIPORTAL_BASE_URL ?= http://$(HOST):$(PORT)

## setup: install, migrate, create the demo PKI and accounts (embedded default)
setup: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py create_demo_data

## run: set up, then serve the portal at http://$(HOST):$(PORT)
run: setup
	@echo "pkiportal: http://$(HOST):$(PORT)/  (Ctrl-C stops it)"
	exec $(PY) manage.py runserver --noreload $(HOST):$(PORT)

## lint: formatting, lint rules, strict types (pyproject.toml's [tool.mypy]), migrations in sync
lint: $(VENV)/.dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run --verbosity 0

## test: install dev tools, lint, run the whole suite
test: lint
	$(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

## messages: gather the marked strings into locale/*/LC_MESSAGES/django.po, then compile
## the .mo files (committed, so that setting up needs no gettext tools)
messages: $(VENV)/.dev
	$(PY) manage.py makemessages --all --no-location --no-obsolete --ignore=tests --ignore=bench
	$(PY) manage.py compilemessages --ignore=.venv --ignore=tests --ignore=bench

clean:
	rm -rf var/ $(VENV)
