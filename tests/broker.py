"""A real Mosquitto for the tests: Debian's `mosquitto`, on 127.0.0.1 and a free port, with a
config file of its own in a temp dir; stopped (and started again on the same port) at will.

When the machine has no Mosquitto the tests that need one fail with what to install (CI's
`.ci/run` installs it), never skip in silence.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def require_mosquitto() -> str:
    if MOSQUITTO is None:
        pytest.fail("Mosquitto is not installed: `apt-get install -y mosquitto` (.ci/run does it)", pytrace=False)
    return MOSQUITTO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Mosquitto:
    """One broker process; `users` = {name: password} turns anonymous access off."""

    def __init__(self, workdir: Path, users: Optional[dict[str, str]] = None) -> None:
        self.binary = require_mosquitto()
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "mosquitto.log"
        # `user`: started as root, Mosquitto would otherwise drop to the user `mosquitto`, who
        # can read neither this temp dir nor the password file.
        lines = [
            f"listener {self.port} 127.0.0.1", "persistence false", f"log_dest file {self.log_path}", "log_type all",
            f"user {getpass.getuser()}",
        ]
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.fail("mosquitto_passwd is missing (Debian's mosquitto package has it)", pytrace=False)
            passwords = workdir / "passwords"
            passwords.touch(mode=0o600)
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), name, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self._proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self._proc.stderr.read().decode(errors='replace') if self._proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
