"""Remembering what was seen recently: repeated packets and echoes of our own broadcasts.

The node can hand the same packet over twice (a rebroadcast heard again, a second
gateway, an MQTT bridge); a command must still run once. Entries expire after the
window and the table is capped, so a flood of distinct ids cannot grow it without end.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Hashable


class RecentKeys:
    """A thread-safe set whose members expire after `window_s`, holding at most `max_keys`."""

    def __init__(self, window_s: float, max_keys: int = 10_000) -> None:
        self._window = window_s
        self._max = max_keys
        self._seen: collections.OrderedDict[Hashable, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add_if_new(self, key: Hashable) -> bool:
        """Remember `key`; True if it was not already seen within the window."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if key in self._seen:
                return False
            self._seen[key] = now
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return True

    def add(self, key: Hashable) -> None:
        """Remember `key` from now on (refreshing it if already there)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            self._seen.pop(key, None)
            self._seen[key] = now
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def restore(self, key: Hashable, age_s: float) -> None:
        """Remember `key` as seen `age_s` ago: keys kept across a restart, given oldest
        first before any new key (expiry relies on the insertion order being time order)."""
        now = time.monotonic()
        with self._lock:
            self._seen.pop(key, None)
            self._seen[key] = now - age_s
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            self._expire(time.monotonic())
            return key in self._seen

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def _expire(self, now: float) -> None:
        # Entries are in insertion order, so the oldest are first.
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= self._window:
                break
            del self._seen[key]
