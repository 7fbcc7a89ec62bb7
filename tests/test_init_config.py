"""`meshbot init`, `--check-config --strict` and the config's friendlier checks, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from meshbot.config import EX_CONFIG, Settings, read_config_file
from meshbot.configtext import example_config_text
from meshbot.starter import STARTER_KEYS, starter_config_text

ROOT = Path(__file__).resolve().parent.parent


def meshbot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_init_writes_a_short_config_that_checks_and_sets_only_the_starter_keys(tmp_path):
    result = meshbot("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "config.py"
    assert written.read_text() == starter_config_text()
    assert set(read_config_file(written)) == set(STARTER_KEYS)
    # Every other key is there as a comment, with its default, so the file documents itself.
    text = written.read_text()
    for name, default in Settings.defaults().items():
        if name not in STARTER_KEYS:
            assert f"# {name} = {default!r}" in text
    written.write_text(text.replace("NODE_HOST = ''", "NODE_HOST = '10.0.0.2'"))
    checked = meshbot("--config", str(written), "--check-config", "--strict", cwd=tmp_path)
    assert checked.returncode == 0 and "config OK" in checked.stderr, checked.stderr


def test_init_never_overwrites(tmp_path):
    mine = tmp_path / "config.py"
    mine.write_text("NODE_HOST = 'mine'\n")
    result = meshbot("init", cwd=tmp_path)
    assert result.returncode == EX_CONFIG and "exists" in result.stderr
    assert mine.read_text() == "NODE_HOST = 'mine'\n"
    result = meshbot("init", str(tmp_path), "--full", cwd=tmp_path)  # a folder means folder/config.py
    assert result.returncode == EX_CONFIG and mine.read_text() == "NODE_HOST = 'mine'\n"


def test_init_full_writes_the_example_from_the_package(tmp_path):
    result = meshbot("init", str(tmp_path / "full.py"), "--full", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "full.py").read_text() == example_config_text()


def test_a_typo_is_a_counted_warning_with_a_suggestion_and_strict_makes_it_an_error(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nMIN_TEXT_INTERVAL = 2\n")
    result = meshbot("--config", str(config), "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MIN_TEXT_INTERVAL = 2: unknown key, ignored; did you mean MIN_TEXT_INTERVAL_S?" in result.stderr
    assert "config OK (1 warning)" in result.stderr
    strict = meshbot("--config", str(config), "--check-config", "--strict", cwd=tmp_path)
    assert strict.returncode == EX_CONFIG
    assert "config error: 1 warning (--strict)" in strict.stderr and "config OK" not in strict.stderr


def test_a_typod_secret_keys_value_is_not_shown(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nMQTT_PASSWROD = 'hunter2'\n")
    result = meshbot("--config", str(config), "--check-config", cwd=tmp_path)
    assert result.returncode == 0 and "MQTT_PASSWROD = ***: unknown key" in result.stderr
    assert "hunter2" not in result.stderr


def test_choice_keys_take_any_case_and_are_stored_canonical(tmp_path):
    config = tmp_path / "config.py"
    config.write_text("NODE_HOST = '10.0.0.2'\nUNITS = 'Imperial'\nLOG_LEVEL = 'debug'\nCONNECTION = 'TCP'\n")
    values = read_config_file(config)
    from meshbot.config import build_settings

    settings = build_settings(values)
    assert (settings.UNITS, settings.LOG_LEVEL, settings.CONNECTION) == ("imperial", "DEBUG", "tcp")
    config.write_text("NODE_HOST = '10.0.0.2'\nUNITS = 'kelvin'\n")
    result = meshbot("--config", str(config), "--check-config", cwd=tmp_path)
    assert result.returncode == EX_CONFIG and "UNITS = 'kelvin': expected one of 'metric', 'imperial'" in result.stderr
