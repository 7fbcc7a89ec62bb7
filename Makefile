# meshbot: every target builds .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 45

.PHONY: demo test bench run check-config clean example-config

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) main.py --demo --demo-seconds $(DEMO_SECONDS)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) bench/run_all.py

run: $(VENV)/.installed
	$(PY) main.py --config config.py

check-config: $(VENV)/.installed
	$(PY) main.py --config config.py --check-config

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Regenerate config.example.py after adding a key (a test fails until you do).
example-config: $(VENV)/.installed
	$(PY) -c "from meshbot.config import example_config_text as t; print(t(), end='')" > config.example.py
