# meshbot: every target builds .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 45
MINUTES ?= 30

.PHONY: demo test bench soak run check-config clean example-config install uninstall

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

# The long run: the daemon against the simulated node, a fault every minute.
soak: $(VENV)/.installed
	$(PY) bench/soak.py --minutes $(MINUTES)

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

# --- Installing as a service (README "Installing on a Raspberry Pi") ----------------------------
# `sudo make install` puts the code and its own venv in PREFIX and the unit in UNITDIR; it never
# runs systemctl. DESTDIR stages everything under another root (packaging, tests): the paths
# written into the unit are PREFIX's, without DESTDIR.
PREFIX ?= /opt/meshbot
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
ROOTDIR = $(DESTDIR)$(PREFIX)
UNIT = $(DESTDIR)$(UNITDIR)/meshbot.service
# What goes into PREFIX: the code and its docs. Not tests/, bench/, the unit, nor a local config.py.
INSTALL_DIRS := meshbot handlers
INSTALL_FILES := main.py requirements.txt README.md config.example.py

# The service user is allocated at start (DynamicUser=yes), so it cannot own anything here:
# every installed file is root's and world-readable (umask 022), config.py included (0644). The
# config holds nothing secret (node ids are public, Open-Meteo needs no key); only root can
# change it, and only root can change the code the service runs.
install:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than /" >&2; exit 2;; esac
	umask 022 && mkdir -p "$(ROOTDIR)"
	@# The code is replaced as a whole, so a module removed upstream does not linger.
	rm -rf $(foreach d,$(INSTALL_DIRS),"$(ROOTDIR)/$(d)")
	umask 022 && cp -R $(INSTALL_DIRS) $(INSTALL_FILES) "$(ROOTDIR)/"
	find $(foreach d,$(INSTALL_DIRS),"$(ROOTDIR)/$(d)") -depth \( -name __pycache__ -o -name '*.pyc' \) -exec rm -rf {} +
	chmod -R u+rwX,go+rX,go-w $(foreach f,$(INSTALL_DIRS) $(INSTALL_FILES),"$(ROOTDIR)/$(f)")
	@# Its own venv; ExecStart runs .venv/bin/python by its full path (no console scripts).
	umask 022 && $(PYTHON) -m venv "$(ROOTDIR)/.venv"
	umask 022 && "$(ROOTDIR)/.venv/bin/python" -m pip install --quiet --upgrade pip
	umask 022 && "$(ROOTDIR)/.venv/bin/python" -m pip install --quiet -r "$(ROOTDIR)/requirements.txt"
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
		cp config.example.py "$(ROOTDIR)/config.py" && chmod 0644 "$(ROOTDIR)/config.py" && \
		echo "created $(PREFIX)/config.py from config.example.py"; \
	fi
	@echo
	@echo "meshbot installed in $(PREFIX), unit in $(UNITDIR)/meshbot.service. Next:"
	@echo "  1. edit $(PREFIX)/config.py (NODE_HOST, or CONNECTION = 'serial' and SERIAL_PORT), then check it:"
	@echo "       $(PREFIX)/.venv/bin/python -B $(PREFIX)/main.py --config $(PREFIX)/config.py --check-config"
	@echo "  2. sudo systemctl daemon-reload"
	@echo "  3. sudo systemctl enable --now meshbot      (after an upgrade: sudo systemctl restart meshbot)"
	@echo "  4. systemctl status meshbot; journalctl -u meshbot -f"

# Removes the unit, the code and the venv; keeps config.py (your settings).
uninstall:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path other than /" >&2; exit 2;; esac
	@if [ -e "$(DESTDIR)$(UNITDIR)/multi-user.target.wants/meshbot.service" ]; then \
		echo "meshbot is still enabled: run 'sudo systemctl disable --now meshbot' first" >&2; exit 1; fi
	rm -f "$(UNIT)"
	rm -rf "$(ROOTDIR)/.venv" $(foreach f,$(INSTALL_DIRS) $(INSTALL_FILES),"$(ROOTDIR)/$(f)")
	@if [ -e "$(ROOTDIR)/config.py" ]; then \
		echo "kept $(PREFIX)/config.py (your settings): delete it and $(PREFIX) yourself if you no longer need them"; \
	else rmdir "$(ROOTDIR)" 2>/dev/null || true; fi
	@echo "now run: sudo systemctl daemon-reload"
