# The two entry points of the README. Both install into .venv first (idempotent).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench

install:
	@bash scripts/install.sh

run: install
	$(BIN)/harness run --preset tiny --methods sft --out runs/tiny

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/bench_tiny_model.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_trainers.py
	$(BIN)/python benchmarks/bench_guidance_distill.py
	$(BIN)/python benchmarks/bench_fcrm.py
	$(BIN)/python benchmarks/bench_shift.py
	$(BIN)/python benchmarks/bench_baselines.py
