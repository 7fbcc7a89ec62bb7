# meshbot. `make help` lists the targets. Every target builds .venv on first use, from the
# package's own metadata (pyproject.toml, the one list of dependencies): `pip install -e .[test]`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 45
MINUTES ?= 30
PORT ?= 4403
CONFIG ?= config.py

.DEFAULT_GOAL := help
.PHONY: help demo try test docs bench soak run check-config probe sim clean example-config requirements install uninstall

help: ## this list
	@echo "meshbot: make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# The versions the service runs (requirements.txt), so the tests pass with exactly those.
	$(PY) -m pip install --quiet -r requirements.txt
	@# Editable: the venv runs this checkout's code; [test]: the test tools, never in the service's venv.
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed ## the real bot against a built-in simulated node (DEMO_SECONDS=45; 0: until Ctrl-C); reads no config.py
	$(PY) main.py --demo --demo-seconds $(DEMO_SECONDS)

try: $(VENV)/.installed ## talk to the real bot yourself, as the simulated node's users (Ctrl-D ends it)
	$(PY) main.py try

test: $(VENV)/.installed ## the whole test suite, four tests at a time (about 2 minutes)
	$(PY) -m pytest -q -n 4 tests

docs: $(VENV)/.installed ## the documentation site (docs/, mkdocs.yml) into site/; a broken link or anchor fails
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

bench: $(VENV)/.installed ## every benchmark, one table (about 20 minutes)
	$(PY) bench/run_all.py

# The long run: the daemon against the simulated node, a fault every minute.
soak: $(VENV)/.installed ## the daemon for MINUTES=30 against the simulated node, a fault every minute
	$(PY) bench/soak.py --minutes $(MINUTES)

run: $(VENV)/.installed ## the daemon in the foreground with ./config.py (CONFIG=path for another)
	$(PY) main.py --config $(CONFIG)

# make can only exit 2 on a failure; `main.py --check-config` itself exits 78 on a bad config.
check-config: $(VENV)/.installed ## check ./config.py: "config OK", or one line naming the bad key
	@$(PY) main.py --config $(CONFIG) --check-config

probe: $(VENV)/.installed ## connect to the node in ./config.py once: its name, firmware, preset, channels, round trip
	@$(PY) main.py --config $(CONFIG) --probe

sim: $(VENV)/.installed ## a simulated node alone on 127.0.0.1:PORT (4403), to try a client against
	$(PY) -m meshbot.sim --port $(PORT)

clean: ## remove .venv and the build leftovers
	rm -rf $(VENV) .pytest_cache build dist site *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# requirements.txt: pyproject.toml's ranges resolved to exact pins with hashes, what `make install`
# puts on the Pi. pip-tools lives in a venv of its own (.venv-lock), never in the bot's.
requirements: ## regenerate requirements.txt (exact pins + hashes) from pyproject.toml's ranges
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools
	.venv-lock/bin/pip-compile --quiet --upgrade --generate-hashes --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-emit-trusted-host --output-file=requirements.txt pyproject.toml

# Regenerate config.example.py after adding a key (a test fails until you do).
example-config: $(VENV)/.installed ## regenerate config.example.py and docs/configuration.md's key table from meshbot/config.py
	$(PY) -m meshbot.configtext

# --- Installing as a service (README "Installing on a Raspberry Pi") ----------------------------
# `sudo make install` puts the code and its own venv in PREFIX and the unit in UNITDIR; it never
# runs systemctl. DESTDIR stages everything under another root (packaging, tests): the paths
# written into the unit are PREFIX's, without DESTDIR.
PREFIX ?= /opt/meshbot
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
ROOTDIR = $(DESTDIR)$(PREFIX)
UNIT = $(DESTDIR)$(UNITDIR)/meshbot.service
# What goes into PREFIX besides the venv: the docs and the example config. The code is the
# package, installed into the venv (not tests/, bench/, nor the unit).
INSTALL_FILES := README.md CHANGELOG.md LICENSE config.example.py
# What older versions copied into PREFIX: removed, so that nothing stale stays beside the venv.
OLD_FILES := meshbot handlers main.py requirements.txt
# What `pip install` builds the package from (a copy: building in the checkout would leave
# root's build/ and meshbot.egg-info/ in it).
PACKAGE_SOURCE := pyproject.toml README.md CHANGELOG.md LICENSE meshbot handlers tools

# The service user is allocated at start (DynamicUser=yes), so it cannot own anything here:
# every installed file is root's and world-readable (umask 022), config.py included (0644). The
# config holds nothing secret (node ids are public, Open-Meteo needs no key); only root can
# change it, and only root can change the code the service runs.
install: ## sudo make install: the package in its own fresh venv in PREFIX (/opt/meshbot), the unit, a config.py if none
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than /" >&2; exit 2;; esac
	umask 022 && mkdir -p "$(ROOTDIR)"
	@# A fresh venv every time: an upgrade keeps no package that the new version dropped.
	rm -rf "$(ROOTDIR)/.venv" $(foreach f,$(OLD_FILES),"$(ROOTDIR)/$(f)")
	umask 022 && cp $(INSTALL_FILES) "$(ROOTDIR)/"
	chmod 0644 $(foreach f,$(INSTALL_FILES),"$(ROOTDIR)/$(f)")
	umask 022 && $(PYTHON) -m venv "$(ROOTDIR)/.venv"
	umask 022 && "$(ROOTDIR)/.venv/bin/python" -m pip install --quiet --upgrade pip
	@# The runtime dependencies at the versions the tests passed with (requirements.txt, hashes
	@# checked), then the package alone (no [test] extra) from a clean copy of the source.
	umask 022 && "$(ROOTDIR)/.venv/bin/python" -m pip install --quiet -r requirements.txt
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && cp -R $(PACKAGE_SOURCE) "$$src/" && \
		find "$$src" -name __pycache__ -prune -exec rm -rf {} + && \
		umask 022 && "$(ROOTDIR)/.venv/bin/python" -m pip install --quiet --no-deps "$$src"
	@base=$$("$(ROOTDIR)/.venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys.executable))'); \
	case "$$base" in /home/*|/root/*) echo "WARNING: the venv's Python is $$base, which the service cannot see (ProtectHome=yes); use PYTHON=/usr/bin/python3" >&2;; esac
	umask 022 && mkdir -p "$(DESTDIR)$(UNITDIR)"
	sed 's|/opt/meshbot|$(PREFIX)|g' meshbot.service > "$(UNIT).tmp"
	chmod 0644 "$(UNIT).tmp" && mv -f "$(UNIT).tmp" "$(UNIT)"
	@# Never overwrite the operator's config.
	@if [ -e "$(ROOTDIR)/config.py" ]; then \
		echo "kept the existing $(PREFIX)/config.py"; \
		[ -n "$$(find "$(ROOTDIR)/config.py" -perm -o+r)" ] || \
			echo "WARNING: $(PREFIX)/config.py is not world-readable; the service cannot read it: chmod 0644 it" >&2; \
	else \
		umask 022 && "$(ROOTDIR)/.venv/bin/python" -m meshbot init "$(ROOTDIR)/config.py" 2>/dev/null && \
		echo "created $(PREFIX)/config.py (short: the keys most operators set; every other at its default)"; \
	fi
	@echo
	@echo "meshbot installed in $(PREFIX), unit in $(UNITDIR)/meshbot.service. Next:"
	@echo "  1. edit $(PREFIX)/config.py (NODE_HOST, or CONNECTION = 'serial' and SERIAL_PORT), then check it:"
	@echo "       $(PREFIX)/.venv/bin/meshbot --config $(PREFIX)/config.py --check-config"
	@echo "  2. try the node once (name, firmware, preset, round trip):"
	@echo "       $(PREFIX)/.venv/bin/meshbot --config $(PREFIX)/config.py --probe"
	@echo "  3. sudo systemctl daemon-reload"
	@echo "  4. sudo systemctl enable --now meshbot      (after an upgrade: sudo systemctl restart meshbot)"
	@echo "  5. systemctl status meshbot; journalctl -u meshbot -f"

# Removes the unit, the code and the venv; keeps config.py (your settings).
uninstall: ## remove the unit, the venv and the docs from PREFIX; keep config.py
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than /" >&2; exit 2;; esac
	@if [ -e "$(DESTDIR)$(UNITDIR)/multi-user.target.wants/meshbot.service" ]; then \
		echo "meshbot is still enabled: run 'sudo systemctl disable --now meshbot' first" >&2; exit 1; fi
	rm -f "$(UNIT)"
	rm -rf "$(ROOTDIR)/.venv" $(foreach f,$(INSTALL_FILES) $(OLD_FILES),"$(ROOTDIR)/$(f)")
	@if [ -e "$(ROOTDIR)/config.py" ]; then \
		echo "kept $(PREFIX)/config.py (your settings): delete it and $(PREFIX) yourself if you no longer need them"; \
	else rmdir "$(ROOTDIR)" 2>/dev/null || true; fi
	@echo "kept the state database in /var/lib/meshbot (the service's StateDirectory; node keys, texts not yet sent): delete it yourself if you no longer need it"
	@echo "now run: sudo systemctl daemon-reload"
