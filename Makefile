# The two commands of the README: `make demo` and `make test`.
.PHONY: demo test lint typecheck pytest bench

demo:
	scripts/setup
	.venv/bin/mdmail demo

test:
	scripts/setup --test
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .

typecheck:
	.venv/bin/mypy

pytest:
	.venv/bin/python -m pytest

bench:
	scripts/setup --test
	.venv/bin/python bench/resolve_bench.py
