"""Server-sent events, as the daemon's ``exec/stream`` and process streams send them.

A small line-oriented decoder (sans I/O): the HTTP layer splits the body
into lines (LF, CRLF or CR, also across network chunks), this
module turns lines into events and events into :class:`ExecChunk` objects,
and :class:`ExecStream` ends an ``exec/stream`` at its ``done`` event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass

from .exceptions import SandkastenStreamError
from .types import ExecChunk, ProcessEvent, ProcessInfo


@dataclass
class SSEEvent:
    """One dispatched event: its type (``message`` when not named) and data."""

    event: str
    data: str


class SSEDecoder:
    """Turns SSE lines into events, following the WHATWG rules.

    Comment lines (``: keep-alive``) are ignored; ``data`` lines of one event
    are joined with a newline; a blank line dispatches the event; ``id`` and
    ``retry`` are ignored (the SDK never reconnects a stream).
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SSEEvent | None:
        """Consume one line (without its terminator); return an event when one is complete."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> SSEEvent | None:
        """At end of stream: an event whose blank line never came, if any."""
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data))
        self._event = ""
        self._data = []
        return event


def event_to_chunk(event: SSEEvent) -> ExecChunk | None:
    """Map an ``exec/stream`` event to a chunk.

    ``chunk`` and ``done`` give an :class:`ExecChunk`; ``error`` raises
    :class:`SandkastenStreamError`; any other event type is ignored (None).
    """
    if event.event not in ("chunk", "done", "error"):
        return None
    try:
        data = json.loads(event.data)
    except ValueError as exc:
        raise SandkastenStreamError(f"malformed {event.event} event: {event.data!r}") from exc
    if not isinstance(data, dict):
        raise SandkastenStreamError(f"malformed {event.event} event: {event.data!r}")
    if event.event == "error":
        raise SandkastenStreamError(str(data.get("error") or "exec stream failed"))
    try:
        if event.event == "chunk":
            return ExecChunk.from_chunk_event(data)
        return ExecChunk.from_done_event(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SandkastenStreamError(f"malformed {event.event} event: {event.data!r}") from exc


class ExecStream:
    """The lines of an ``exec/stream`` answer to chunks, up to the ``done`` one.

    The client feeds each line and yields the chunk it gives; after a chunk
    with ``done`` it stops reading. At the end of the body it yields what
    :meth:`finish` gives, which raises if no ``done`` event came.
    """

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.done = False

    def feed(self, line: str) -> ExecChunk | None:
        """Consume one line; return a chunk when an event completes one."""
        return self._chunk(self._decoder.feed(line))

    def finish(self) -> Iterator[ExecChunk]:
        """At end of body: an event whose blank line never came, then
        :class:`SandkastenStreamError` unless the ``done`` event was seen.
        """
        chunk = self._chunk(self._decoder.flush())
        if chunk is not None:
            yield chunk
        if not self.done:
            raise SandkastenStreamError("exec stream ended before its done event")

    def _chunk(self, event: SSEEvent | None) -> ExecChunk | None:
        chunk = event_to_chunk(event) if event is not None else None
        if chunk is not None and chunk.done:
            self.done = True
        return chunk


def event_to_process_event(event: SSEEvent) -> ProcessEvent | None:
    """Map a process stream's event (``encoding=base64``) to a :class:`ProcessEvent`;
    ``error`` raises :class:`SandkastenStreamError`; unknown types are ignored.
    """
    if event.event not in ("start", "stdout", "stderr", "pty", "end", "error"):
        return None
    try:
        data = json.loads(event.data)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        if event.event == "error":
            raise SandkastenStreamError(str(data.get("error") or "process stream failed"))
        if event.event == "start":
            return ProcessEvent("start", info=ProcessInfo.from_json(data))
        if event.event == "end":
            return ProcessEvent("end", exit_code=int(data["exit_code"]), signal=data.get("signal"))
        return ProcessEvent(event.event, data=base64.b64decode(data["data_base64"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SandkastenStreamError(f"malformed {event.event} event: {event.data!r}") from exc


class ProcessStream:
    """The lines of a process stream to :class:`ProcessEvent` objects, up to ``end``."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.done = False

    def feed(self, line: str) -> ProcessEvent | None:
        """Consume one line; return an event when one completes."""
        return self._event(self._decoder.feed(line))

    def finish(self) -> Iterator[ProcessEvent]:
        """At end of body: a pending event, then an error unless ``end`` came."""
        ev = self._event(self._decoder.flush())
        if ev is not None:
            yield ev
        if not self.done:
            raise SandkastenStreamError("process stream ended before its end event")

    def _event(self, event: SSEEvent | None) -> ProcessEvent | None:
        ev = event_to_process_event(event) if event is not None else None
        if ev is not None and ev.done:
            self.done = True
        return ev
