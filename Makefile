# gastown-finetune: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test test-fast bench bench-witness bench-patrol lint clean

install:
	@./install.sh

demo: install
	$(PY) -m gt_ext.demo

# promptfoo (installed by install.sh) lets the eval tests compare our grader with the real one.
test: install
	PROMPTFOO_BIN=$${PROMPTFOO_BIN:-$(CURDIR)/$(VENV)/bin/promptfoo} $(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not integration and not slow" tests

# Speed benchmarks (ours vs the named baseline, ratio printed). The witness quality run trains for
# ~30 CPU-minutes, so it has its own target.
bench: install
	@for b in bench/*.py; do case "$$b" in bench/witness_eval.py|bench/patrol_eval.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

bench-witness: install
	$(PY) bench/witness_eval.py

# Formula patrol models (witness, refinery, deacon, dog): stage evidence with the real tools, train
# one LoRA per role (one at a time, niced), score base and trained on the held-out patrol suites.
bench-patrol: install
	nice -n 5 $(PY) bench/patrol_eval.py --constrain

lint: install
	$(VENV)/bin/ruff check gt_ext tests bench hooks providers node0_patches

clean:
	rm -rf $(VENV) .pytest_cache
