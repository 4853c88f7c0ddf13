# Two commands do all the set-up:  make demo  (the main job)  and  make test  (the tests).
# Both create .venv on first use (tools/bootstrap.sh) and reuse it afterwards.

VENV := .venv
PY := $(VENV)/bin/python
TT := $(VENV)/bin/tinytitan
STAMP := $(VENV)/.bootstrap-done

.PHONY: setup demo test test-fast bench clean-venv

$(STAMP): tools/bootstrap.sh tools/cpu_flags.py tools/build_llama.py pyproject.toml
	bash tools/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	bash tools/demo.sh

test: $(STAMP)
	bash tools/browser.sh
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not real_model"

bench: $(STAMP)
	$(PY) bench/decode_vs_llama_bench.py
	$(PY) bench/perplexity_vs_native.py

clean-venv:
	rm -rf $(VENV)
