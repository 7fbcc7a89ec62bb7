"""Channel keys and packet encryption as the firmware does them, for what travels over MQTT.

What this relies on (../shared/MESHTASTIC-NOTES.md, "MQTT", measured on meshtasticd 2.7.13;
the firmware's `CryptoEngine` and `Channels` sources for the key expansion):

* a channel's PSK is 0, 1, 16 or 32 bytes. 0 bytes, or the 1-byte value 0: no encryption.
  A 1-byte value `n` (1..255) is the firmware's well-known default key with its last byte
  raised by `n - 1` (so `AQ==`, n = 1, is the default key itself). 16 and 32 bytes are
  AES-128 and AES-256 keys as they are;
* a packet is AES-CTR encrypted with the channel key; the 16-byte nonce is the packet id as
  a 64-bit little-endian number, then the sender (`from`) as 32-bit little-endian, then
  zeros. CTR is its own inverse: encrypting and decrypting are one operation;
* the packet's `channel` field on the air and over MQTT is the channel *hash*: the XOR of
  the name's bytes XOR-ed with the XOR of the (expanded) key's bytes (`LongFast` with
  `AQ==`: 8).

Written here on the `cryptography` package (the AES itself is never ours).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from functools import reduce
from typing import Optional

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# The firmware's default channel key (PSK `AQ==`), as every Meshtastic client documents it.
DEFAULT_KEY = base64.b64decode("1PG7OiApB1nwvP+rz05pAQ==")


class PskError(ValueError):
    """A PSK that is not one the firmware accepts (the config names the key in its message)."""


def expand_psk(psk: bytes) -> Optional[bytes]:
    """The AES key a channel PSK stands for, or None for an unencrypted channel."""
    if len(psk) == 0 or psk == b"\x00":
        return None
    if len(psk) == 1:
        return DEFAULT_KEY[:-1] + bytes(((DEFAULT_KEY[-1] + psk[0] - 1) & 0xFF,))
    if len(psk) in (16, 32):
        return bytes(psk)
    raise PskError(f"a channel key is 0, 1, 16 or 32 bytes, not {len(psk)}")


def parse_psk(text: str) -> Optional[bytes]:
    """`expand_psk` of a base64 PSK as the apps and the CLI show it (`AQ==`)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PskError(f"{text!r} is not base64") from None
    return expand_psk(raw)


def channel_hash(name: str, key: Optional[bytes]) -> int:
    """The one-byte channel number packets carry for a channel of this name and key."""
    xor = lambda data: reduce(lambda a, b: a ^ b, data, 0)  # noqa: E731
    return xor(name.encode("utf-8")) ^ xor(key or b"")


def _nonce(packet_id: int, sender: int) -> bytes:
    return struct.pack("<QI", packet_id & 0xFFFFFFFFFFFFFFFF, sender & 0xFFFFFFFF) + bytes(4)


def crypt(key: bytes, packet_id: int, sender: int, data: bytes) -> bytes:
    """Encrypt or decrypt (AES-CTR is symmetric) a packet's payload bytes."""
    transform = Cipher(algorithms.AES(key), modes.CTR(_nonce(packet_id, sender))).encryptor()
    return transform.update(data) + transform.finalize()


@dataclass(frozen=True)
class ChannelKey:
    """A channel by name, its key (None: unencrypted) and the hash packets carry for it."""

    name: str
    key: Optional[bytes]

    @property
    def hash(self) -> int:
        return channel_hash(self.name, self.key)

    @classmethod
    def from_psk(cls, name: str, psk_base64: str) -> "ChannelKey":
        return cls(name, parse_psk(psk_base64))
