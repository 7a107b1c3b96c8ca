"""OpenAI Agents SDK integration (``pip install 'sandkasten[agents]'``).

Three ways to give an ``agents.Agent`` a sandbox, as in sandkasten 0.3:

- ``create_sandkasten_tools(session)``: tools bound to one session.
- ``sandkasten_tools()`` with ``Agent[SandkastenContext]`` and
  ``Runner.run(..., context=SandkastenContext(session=session))``: the
  session comes from the run context.
- ``async with sandbox_tools_for_workspace(client, workspace_id) as (session, tools)``:
  a session on a persistent per-user workspace, destroyed afterwards.

The tools are ``sandbox_exec``, ``sandbox_read_file``, ``sandbox_write_file``,
``sandbox_list_files`` (see :mod:`sandkasten.tools`) and ``sandbox_stats``.
Importing this module works without ``openai-agents``; calling a function
that builds tools raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .session import Session
from .tools import TOOL_DEFINITIONS, SandboxTools

if TYPE_CHECKING:
    from .client import SandboxClient

__all__ = [
    "SandkastenContext",
    "create_sandkasten_tools",
    "sandbox_tools_for_workspace",
    "sandkasten_tools",
]

_STATS_DEFINITION: dict[str, Any] = {
    "name": "sandbox_stats",
    "description": "Memory, CPU and process usage of the sandbox.",
    "parameters": {"type": "object", "properties": {}, "required": []},
}


@dataclass
class SandkastenContext:
    """Run context for :func:`sandkasten_tools`: the session the tools act on."""

    session: Session
    workspace_id: str | None = None


def _agents_module() -> Any:
    try:
        import agents
    except ImportError as exc:  # pragma: no cover - exercised when the extra is absent
        raise ImportError(
            "the OpenAI Agents SDK is not installed: pip install 'sandkasten[agents]' "
            "(or pip install openai-agents)"
        ) from exc
    return agents


async def _stats(session: Session) -> str:
    s = await session.stats()
    return (
        f"memory_bytes={s.memory_bytes} ({s.memory_bytes / 2**20:.2f} MB), "
        f"memory_limit={s.memory_limit} ({s.memory_limit / 2**20:.2f} MB), "
        f"cpu_usage_usec={s.cpu_usage_usec}, pids={s.pids}"
    )


def _build(get_session: Callable[[Any], Session]) -> list[Any]:
    agents = _agents_module()

    def tool(definition: dict[str, Any]) -> Any:
        name = definition["name"]

        async def invoke(ctx: Any, input_json: str) -> str:
            session = get_session(ctx)
            if name == "sandbox_stats":
                return await _stats(session)
            return await SandboxTools(session).call(name, input_json)

        handler: Callable[[Any, str], Awaitable[str]] = invoke
        return agents.FunctionTool(
            name=name,
            description=definition["description"],
            params_json_schema=definition["parameters"],
            on_invoke_tool=handler,
            strict_json_schema=False,
        )

    return [tool(d) for d in [*TOOL_DEFINITIONS, _STATS_DEFINITION]]


def create_sandkasten_tools(session: Session) -> list[Any]:
    """Tools bound to ``session`` (no run context needed)."""
    return _build(lambda _ctx: session)


def sandkasten_tools() -> list[Any]:
    """Tools that act on ``ctx.context.session`` (a :class:`SandkastenContext`)."""

    def from_context(ctx: Any) -> Session:
        context = getattr(ctx, "context", None)
        session = getattr(context, "session", None)
        if not isinstance(session, Session):
            raise TypeError("run context must be a SandkastenContext with a session")
        return session

    return _build(from_context)


@asynccontextmanager
async def sandbox_tools_for_workspace(
    client: SandboxClient,
    workspace_id: str,
    *,
    image: str | None = None,
    ttl_seconds: int | None = None,
) -> AsyncIterator[tuple[Session, list[Any]]]:
    """A session on the persistent workspace ``workspace_id`` and tools bound
    to it; the session is destroyed on exit, the workspace's files stay.
    """
    session = await client.create_session(
        image=image, ttl_seconds=ttl_seconds, workspace_id=workspace_id
    )
    async with session:
        yield session, create_sandkasten_tools(session)
