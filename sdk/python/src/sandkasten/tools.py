"""Framework-neutral agent tools: exec, read, write and list as plain
functions plus JSON-schema tool specs that any LLM framework can register.

Example with a chat-completions style API::

    tools = SandboxTools(session)
    response = llm.chat(messages, tools=openai_tool_specs())
    for call in response.tool_calls:
        result = await tools.call(call.function.name, call.function.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

Every tool returns a string for the model. An API error (missing file, bad
path, ...) is returned as ``"error: CODE: message"`` so the model can react;
connection errors and unknown tool names raise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .exceptions import SandkastenAPIError
from .session import Session
from .sync import SyncSession
from .types import ExecResult, FileEntry, ReadResult

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "TOOL_DEFINITIONS",
    "SandboxTools",
    "SyncSandboxTools",
    "anthropic_tool_specs",
    "format_exec_result",
    "format_listing",
    "format_read_result",
    "openai_tool_specs",
]

DEFAULT_MAX_OUTPUT_CHARS = 20_000
"""Longer tool results keep their head and tail, so a chatty command cannot flood the context."""

TOOL_DEFINITIONS: list[dict[str, Any]] = [
    {
        "name": "sandbox_exec",
        "description": (
            "Run a shell command in a persistent Linux sandbox (bash). State persists "
            "between calls: cd, environment variables, functions and background jobs. "
            "Returns the exit code, the working directory after the command and the "
            "combined stdout/stderr."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "cmd": {"type": "string", "description": "The shell command to run."},
                "timeout_ms": {
                    "type": "integer",
                    "description": "Timeout in milliseconds (default 30000).",
                },
            },
            "required": ["cmd"],
            "additionalProperties": False,
        },
    },
    {
        "name": "sandbox_read_file",
        "description": "Read a text file from the sandbox. Relative paths are under /workspace.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path."},
                "max_bytes": {
                    "type": "integer",
                    "description": "Read at most this many bytes (default: whole file).",
                },
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    },
    {
        "name": "sandbox_write_file",
        "description": (
            "Write a text file in the sandbox, replacing it if it exists and creating "
            "missing directories. Relative paths are under /workspace."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path."},
                "content": {"type": "string", "description": "The complete file content."},
            },
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    },
    {
        "name": "sandbox_list_files",
        "description": "List a directory in the sandbox (default /workspace).",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "Directory path."},
            },
            "required": [],
            "additionalProperties": False,
        },
    },
]
"""The four tools: name, description and JSON-schema parameters."""


def openai_tool_specs() -> list[dict[str, Any]]:
    """Tool specs in the OpenAI chat-completions format (``{"type": "function", ...}``)."""
    return [{"type": "function", "function": dict(d)} for d in TOOL_DEFINITIONS]


def anthropic_tool_specs() -> list[dict[str, Any]]:
    """Tool specs in the Anthropic messages format (``input_schema``)."""
    return [
        {"name": d["name"], "description": d["description"], "input_schema": d["parameters"]}
        for d in TOOL_DEFINITIONS
    ]


def _clip(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[-tail:]}"


def format_exec_result(result: ExecResult, max_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """An exec result as the model sees it."""
    notes = []
    if result.timed_out:
        notes.append("timed out")
    if result.truncated:
        notes.append("output truncated by the sandbox")
    note = f" ({', '.join(notes)})" if notes else ""
    return (
        f"exit_code={result.exit_code}{note}\ncwd={result.cwd}\n---\n"
        f"{_clip(result.output, max_chars)}"
    )


def format_read_result(result: ReadResult, max_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> str:
    """File content as the model sees it."""
    text = _clip(result.text, max_chars)
    if result.truncated:
        text += "\n(truncated)"
    return text


def format_listing(path: str, entries: list[FileEntry]) -> str:
    """A directory listing as the model sees it, one entry a line."""
    if not entries:
        return f"{path}: empty directory"
    lines = [f"{path}:"]
    for e in entries:
        suffix = "/" if e.is_dir else ("@" if e.type == "symlink" else "")
        lines.append(f"{e.type:7} {oct(e.mode)[2:]:>4} {e.size:>10}  {e.name}{suffix}")
    return "\n".join(lines)


def _error(exc: SandkastenAPIError) -> str:
    return f"error: {exc.error_code}: {exc.message}"


def _arguments(arguments: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        parsed = json.loads(arguments)
        if not isinstance(parsed, dict):
            raise ValueError("tool arguments must be a JSON object")
        return parsed
    return dict(arguments)


class SandboxTools:
    """The four tools bound to an async :class:`Session`."""

    def __init__(self, session: Session, *, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS):
        self.session = session
        self.max_output_chars = max_output_chars

    async def sandbox_exec(self, cmd: str, timeout_ms: int | None = None) -> str:
        """Run a shell command in the persistent shell."""
        try:
            result = await self.session.exec(cmd, timeout_ms=timeout_ms)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_exec_result(result, self.max_output_chars)

    async def sandbox_read_file(self, path: str, max_bytes: int | None = None) -> str:
        """Read a file."""
        try:
            result = await self.session.read(path, max_bytes=max_bytes)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_read_result(result, self.max_output_chars)

    async def sandbox_write_file(self, path: str, content: str) -> str:
        """Write a file."""
        try:
            await self.session.write(path, content)
        except SandkastenAPIError as exc:
            return _error(exc)
        return f"wrote {len(content.encode('utf-8'))} bytes to {path}"

    async def sandbox_list_files(self, path: str = "/workspace") -> str:
        """List a directory."""
        try:
            entries = await self.session.list(path)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_listing(path, entries)

    async def call(self, name: str, arguments: str | Mapping[str, Any] | None = None) -> str:
        """Dispatch a model's tool call by name; ``arguments`` is a JSON string or a mapping.

        Raises:
            KeyError: Unknown tool name.
        """
        if name not in _TOOL_NAMES:
            raise KeyError(f"unknown tool {name!r}")
        method = getattr(self, name)
        result: str = await method(**_arguments(arguments))
        return result


class SyncSandboxTools:
    """The four tools bound to a :class:`SyncSession`."""

    def __init__(
        self, session: SyncSession, *, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    ) -> None:
        self.session = session
        self.max_output_chars = max_output_chars

    def sandbox_exec(self, cmd: str, timeout_ms: int | None = None) -> str:
        """Run a shell command in the persistent shell."""
        try:
            result = self.session.exec(cmd, timeout_ms=timeout_ms)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_exec_result(result, self.max_output_chars)

    def sandbox_read_file(self, path: str, max_bytes: int | None = None) -> str:
        """Read a file."""
        try:
            result = self.session.read(path, max_bytes=max_bytes)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_read_result(result, self.max_output_chars)

    def sandbox_write_file(self, path: str, content: str) -> str:
        """Write a file."""
        try:
            self.session.write(path, content)
        except SandkastenAPIError as exc:
            return _error(exc)
        return f"wrote {len(content.encode('utf-8'))} bytes to {path}"

    def sandbox_list_files(self, path: str = "/workspace") -> str:
        """List a directory."""
        try:
            entries = self.session.list(path)
        except SandkastenAPIError as exc:
            return _error(exc)
        return format_listing(path, entries)

    def call(self, name: str, arguments: str | Mapping[str, Any] | None = None) -> str:
        """Dispatch a model's tool call by name; see :meth:`SandboxTools.call`."""
        if name not in _TOOL_NAMES:
            raise KeyError(f"unknown tool {name!r}")
        result: str = getattr(self, name)(**_arguments(arguments))
        return result


_TOOL_NAMES = frozenset(d["name"] for d in TOOL_DEFINITIONS)
