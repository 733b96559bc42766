# The two commands of the README: `make dry-run` (the main job) and `make test`.
# Both create the environment in .venv first if it is missing or older than its inputs.
VENV := .venv
STAMP := $(VENV)/.aimo-setup

.PHONY: dry-run test lint setup clean

dry-run: $(STAMP)
	$(VENV)/bin/aimo-kernel dry-run

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check aimo_kernel tests benchmarks tools
	$(VENV)/bin/mypy aimo_kernel
	$(VENV)/bin/lint-imports

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh scripts/constraints-cpu.txt
	scripts/setup.sh
	touch $(STAMP)

clean:
	rm -rf $(VENV) out
