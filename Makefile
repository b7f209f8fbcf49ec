# The README's two commands: `make demo` and `make test`. Both install everything first (scripts/install.sh).
VENV ?= .venv
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: install demo test

install:
	bash scripts/install.sh

demo: install
	$(VENV)/bin/visionnode pipeline run --local $(DEMO_ARGS)

test: install
	VENV=$(VENV) bash scripts/run_tests.sh $(PYTEST_ARGS)
