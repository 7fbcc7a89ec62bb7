"""`python -m meshbot.sim --port 4403`: the simulated node on its own, to try a client against.

The node's TCP API on 127.0.0.1 (never another address), with the real framing, handshake and
firmware rules (one client at a time, the 2 s text limit), and the users ALIC, BOB and CARL.
Point meshbot at it (NODE_HOST = '127.0.0.1', or `meshbot --probe`), or another client
(`meshtastic --host 127.0.0.1 --info`). Each line typed on stdin is sent into the mesh as a
text from ALIC on ch0 (`/ping`...), and every text the client sends is printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, Callable, Optional, Sequence, TextIO

from meshbot.sim.node import BROADCAST_NUM, SentText, SimulatedNode


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m meshbot.sim", description="A simulated Meshtastic node on 127.0.0.1, for trying clients."
    )
    parser.add_argument("--port", type=int, default=4403, help="TCP port to listen on (default: 4403; 0: any free port)")
    parser.add_argument("--preset", default="LONG_FAST", help="LoRa modem preset the node reports (default: LONG_FAST)")
    parser.add_argument(
        "--no-text-limit", action="store_true", help="accept texts less than 2 s apart (the firmware does not)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    node = SimulatedNode(
        port=args.port, modem_preset=args.preset, text_rate_limit_s=None if args.no_text_limit else 2.0
    )
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            out.write(line + "\n")
            out.flush()

    def client_sent(sent: SentText) -> None:
        where = f"ch{sent.channel}" if sent.to == BROADCAST_NUM else f"!{sent.to:08x}"
        say(f"{node.short_name} -> {where}: {sent.text}")

    node.on_text = client_sent
    try:
        node.start()
    except OSError as exc:
        sys.stderr.write(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}\n")
        return 1
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    users = ", ".join(u.short_name for u in node.users.values())
    say(
        f"simulated node {node.short_name} (!{node.node_num:08x}, {args.preset}) listening on 127.0.0.1:{node.port};"
        f" users {users}; lines on stdin are sent by ALIC on ch0; Ctrl-C stops"
    )
    threading.Thread(target=_relay_stdin, args=(node, say), name="sim-stdin", daemon=True).start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
    return 0


def _relay_stdin(node: SimulatedNode, say: Callable[[str], None]) -> None:
    """Each line of stdin becomes a text from the first user; EOF only ends the relay."""
    sender = next(iter(node.users.values()))
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        packet = node.user_packet(sender, text)
        if node.deliver(packet):
            say(f"{sender.short_name} -> ch0: {text}")
        else:
            say(f"{sender.short_name} -> ch0: {text} (kept for the next client, as a node does)")


if __name__ == "__main__":
    sys.exit(main())
