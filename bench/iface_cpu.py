"""Worker for bench_core: one interface in its own process, counting CPU per inbound packet.

    python bench/iface_cpu.py optimized|stock PORT COUNT

Prints READY once connected, then `DONE <cpu seconds> <wall seconds>` after COUNT text
packets have been received (and published by the library, as the bot consumes them).
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshtastic.tcp_interface import TCPInterface  # noqa: E402
from pubsub import pub  # noqa: E402

from meshbot.link.interface import OptimizedTCPInterface  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    kind, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    received = 0
    done = threading.Event()

    def on_text(packet: dict, interface: object) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    pub.subscribe(on_text, "meshtastic.receive.text")
    if kind == "stock":
        iface = TCPInterface("127.0.0.1", portNumber=port)
    else:
        iface = OptimizedTCPInterface("127.0.0.1", port)
    time.sleep(0.5)  # let the handshake's own work settle before measuring
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    print("READY", flush=True)
    if not done.wait(600):
        print(f"TIMEOUT {received}", flush=True)
        sys.exit(1)
    print(f"DONE {cpu_seconds() - cpu0:.4f} {time.monotonic() - wall0:.4f}", flush=True)
    iface.close()


if __name__ == "__main__":
    main()
