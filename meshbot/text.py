"""Text for the air: cutting replies into texts the firmware accepts (at most N bytes of UTF-8), short ages.

Limits are in bytes, not characters: an emoji is 4 bytes, a Cyrillic letter 2. A cut
never falls inside a character, prefers a space, and avoids separating a base letter
from its combining mark or an emoji from its modifier. Chunk markers ` (1/3)` count
inside the budget; a reply longer than the allowed number of chunks ends with `…`.

No text after the first of a split starts with `/` (a cut is never placed before a word
that starts with one): another bot on the channel would take it for a command. The
first text is the caller's business: `quote_command` is the rule for replies.
"""

from __future__ import annotations

import unicodedata

ELLIPSIS = "…"
_ELLIPSIS_BYTES = len(ELLIPSIS.encode("utf-8"))
_ZWJ = "\u200d"
_JOINERS = {_ZWJ, "\ufe0f", "\ufe0e"}


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _char_bytes(ch: str) -> int:
    cp = ord(ch)
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def _glued(text: str, cut: int) -> bool:
    """True if cutting between text[cut-1] and text[cut] would split one visible symbol."""
    nxt, prev = text[cut], text[cut - 1]
    return (
        nxt in _JOINERS
        or prev == _ZWJ
        or unicodedata.combining(nxt) != 0
        or 0x1F3FB <= ord(nxt) <= 0x1F3FF  # skin-tone modifier
    )


COMMAND_START = "/"
QUOTE = "> "


def _skip_blank(text: str, pos: int) -> int:
    """The first position from `pos` that is neither a blank nor invisible (a format character)."""
    n = len(text)
    while pos < n and (text[pos].isspace() or unicodedata.category(text[pos]) == "Cf"):
        pos += 1
    return pos


def starts_command(text: str, pos: int = 0) -> bool:
    """True if text[pos:] reads as a command to a bot: `/` after blanks and invisible characters.

    Invisible ones (format characters: zero-width, bidi marks) count as nothing, since a
    bot that strips them, as this one does, would see the `/` first.
    """
    pos = _skip_blank(text, pos)
    return pos < len(text) and text[pos] == COMMAND_START


def quote_command(text: str) -> str:
    """`text`, or `> text` when it would start with `/` (another bot would run it as a command)."""
    return QUOTE + text[_skip_blank(text, 0):] if starts_command(text) else text


def _take(text: str, start: int, budget: int) -> tuple[str, int]:
    """The longest piece of text[start:] within `budget` bytes, and where the rest starts.

    The rest never starts with `/` (see starts_command), unless the text is nothing but
    slashes.
    """
    end, used, n = start, 0, len(text)
    while end < n:
        size = _char_bytes(text[end])
        if used + size > budget:
            break
        used += size
        end += 1
    if end < n and (not text[end].isspace() or starts_command(text, end)):
        # A space in the second half of the piece is a good cut; an earlier one would
        # waste too much of a text that costs airtime, so cut the word instead.
        half = start + (end - start) // 2
        cut, space = end, -1
        while True:
            space = max(text.rfind(" ", start, cut), text.rfind("\n", start, cut))
            if space <= half or not starts_command(text, space):
                break
            cut = space  # the word after this space is a command: try an earlier space
        if space > half:
            end = space
        else:
            while end - 1 > start and (_glued(text, end) or starts_command(text, end)):
                end -= 1
    piece = text[start:end].rstrip()
    while end < n and text[end].isspace():
        end += 1
    return piece, end


def _pieces(text: str, budget: int) -> list[str]:
    pieces, pos = [], 0
    while pos < len(text):
        piece, pos = _take(text, pos, budget)
        if piece:
            pieces.append(piece)
    return pieces


def split_text(text: str, max_bytes: int, max_chunks: int) -> list[str]:
    """Split `text` into at most `max_chunks` texts of at most `max_bytes` UTF-8 bytes each."""
    # Lone surrogates cannot be sent; make them visible instead of crashing the encoder.
    text = text.encode("utf-8", "replace").decode("utf-8").strip()
    if not text:
        return []
    if utf8_len(text) <= max_bytes:
        return [text]
    if max_chunks == 1:
        return [_take(text, 0, max_bytes - _ELLIPSIS_BYTES)[0] + ELLIPSIS]

    for digits in (1, 2):
        marker_bytes = len(f" ({'9' * digits}/{'9' * digits})")
        budget = max_bytes - marker_bytes
        pieces = _pieces(text, budget)
        if len(pieces) < 10 ** digits:
            break
    if len(pieces) > max_chunks:
        pieces = pieces[: max_chunks - 1]
        # Re-cut the last allowed chunk from where the kept ones end, leaving room for "…".
        pos = 0
        for _ in range(max_chunks - 1):
            _, pos = _take(text, pos, budget)
        last, _ = _take(text, pos, budget - _ELLIPSIS_BYTES)
        pieces.append(last + ELLIPSIS)
    total = len(pieces)
    return [f"{piece} ({i}/{total})" for i, piece in enumerate(pieces, 1)]


def format_age(seconds: float) -> str:
    """A short age: 45s, 12m, 3h, 5d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_duration(seconds: float, decimals: int = 1) -> str:
    """A duration for a log or status line: 3.2 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.{decimals}f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def counted(n: int, noun: str) -> str:
    """'1 text', '3 texts': an English count for status lines and replies."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
