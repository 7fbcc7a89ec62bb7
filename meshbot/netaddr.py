"""API_ALLOW: which client addresses the shared node API accepts.

Kept out of `config.py` (long already): the parser that config declares for the key, and
the matcher the server asks at accept. An entry is an address ('127.0.0.1', '::1') or a
network ('192.168.1.0/24', 'fd00::/8'); an address is the network of that one address.
A network written with host bits set ('192.168.1.7/24') is refused rather than guessed:
the operator may have meant the one address or the whole network.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

ALLOW_FORM = "a list of addresses or networks like ['127.0.0.1', '192.168.1.0/24', 'fd00::/8'], or () for any"


def parse_allow(value: Any) -> tuple[str, ...]:
    """API_ALLOW's entries, each checked; the canonical form of each network."""
    if isinstance(value, str):
        value = (value,)  # one entry without the brackets: what was meant is clear
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"expected {ALLOW_FORM}, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{item!r} is not an address or network; expected {ALLOW_FORM}")
        try:
            network = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an address or network ({exc}); expected {ALLOW_FORM}") from None
        out.append(str(network))
    return tuple(dict.fromkeys(out))


class AllowList:
    """Answers "may this peer connect?"; empty: everyone may."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(e) for e in entries)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def allows(self, host: str) -> bool:
        if not self._networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        # An IPv4 client of a dual-stack ('[::]') socket shows as ::ffff:a.b.c.d.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == n.version and address in n for n in self._networks)
