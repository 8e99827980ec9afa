"""Server-sent events framing, byte-exact.

`SseFramer` cuts a byte stream into events without changing a byte: every event it returns
keeps its own terminating blank line, so the concatenation of all events plus `flush()`
is exactly the input. That lets a tap forward, drop or rewrite whole events and still
send the client the upstream's bytes.

Framing follows the WHATWG SSE grammar: a line ends with CRLF, LF or CR, and an empty line
ends an event. So an event boundary is two line terminators in a row (``\\n\\n``,
``\\r\\n\\r\\n``, ``\\r\\r``, and the mixed forms). Chunks from the network may split the
stream anywhere; the result never depends on where.

`event_fields()` reads the ``event:`` and ``data:`` fields of one framed event.
"""

from __future__ import annotations

import re

# Two line terminators in a row. A CR directly followed by LF is one terminator (CRLF),
# never two, hence the lookaheads.
_BOUNDARY = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
# Longest boundary minus one: how far back a new search must start to catch a boundary
# that straddles two chunks.
_OVERLAP = 3


class SseFramer:
    """Incremental SSE event splitter. Not thread-safe; one per stream."""

    __slots__ = ("_cr", "_scan", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._scan = 0  # offset in _tail before which no boundary can start
        self._cr = False  # seen a CR: switch from the LF fast path to the full grammar

    def push(self, chunk: bytes) -> list[bytes]:
        """Adds `chunk`; returns the events it completed, each with its terminator."""
        if not self._cr and 13 in chunk:  # int membership: a memchr, the cheapest scan
            self._cr = True
        if self._tail:
            buf = self._tail + chunk
            pos = self._scan
        else:
            buf = chunk
            pos = 0
        events: list[bytes] = []
        start = 0
        n = len(buf)
        if not self._cr:
            # LF-only stream (the common case): hop from LF to LF with memchr and look at
            # the next byte; cheaper than searching for a two-byte pattern.
            while pos < n and (i := buf.find(10, pos)) >= 0:
                pos = i + 1
                if pos < n and buf[pos] == 10:
                    pos += 1
                    events.append(buf[start:pos])  # slicing all of buf returns buf: no copy
                    start = pos
        else:
            while (m := _BOUNDARY.search(buf, pos)) is not None:
                end = m.end()
                # A boundary ending in CR at the very end may still grow into CR+LF with
                # the next chunk: wait, so the cut does not depend on chunking.
                if end == n and buf[end - 1] == 0x0D:
                    break
                events.append(buf[start:end])
                start = pos = end
        tail = buf[start:] if start else buf
        self._tail = tail
        self._scan = len(tail) - _OVERLAP if len(tail) > _OVERLAP else 0
        return events

    def flush(self) -> bytes:
        """Returns what is left (an event without its final blank line, or b"")."""
        tail, self._tail, self._scan = self._tail, b"", 0
        return tail

    @property
    def pending(self) -> int:
        """Number of bytes held back, waiting for the end of their event."""
        return len(self._tail)


def split_events(body: bytes) -> list[bytes]:
    """All events of a complete body, the trailing unterminated one included."""
    framer = SseFramer()
    events = framer.push(body)
    if tail := framer.flush():
        events.append(tail)
    return events


def event_fields(event: bytes) -> tuple[bytes | None, bytes | None]:
    """(event name, data) of one event; None when the field is absent.

    Several ``data:`` lines are joined with LF as the SSE spec says; one optional space
    after the colon is removed. Comments and other fields (``id:``, ``retry:``) are ignored.
    """
    name: bytes | None = None
    data: list[bytes] = []
    # bytes.splitlines splits on exactly the SSE line terminators: CRLF, LF, CR.
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value[:1] == b" " else value)
        elif line.startswith(b"event:"):
            value = line[6:]
            name = value[1:] if value[:1] == b" " else value
    return name, (b"\n".join(data) if data else None)


def with_data(event: bytes, data: bytes) -> bytes:
    """`event` with its data replaced by one ``data:`` line holding `data`.

    Other fields keep their place; the event keeps its line terminator style.
    """
    if b"\r\n" in event:
        term = b"\r\n"
    elif b"\n" not in event and b"\r" in event:
        term = b"\r"
    else:
        term = b"\n"
    lines: list[bytes] = []
    placed = False
    for line in event.splitlines():
        if line.startswith(b"data:"):
            if not placed:
                lines.append(b"data: " + data)
                placed = True
        elif line:
            lines.append(line)
    if not placed:
        lines.append(b"data: " + data)
    return term.join(lines) + term + term
