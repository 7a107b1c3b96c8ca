"""The sandbox as tools of an OpenAI Agents SDK agent (``pip install 'sandkasten[agents]'``).

    export SANDKASTEN_URL=http://127.0.0.1:8080 SANDKASTEN_API_KEY=sk-... OPENAI_API_KEY=sk-...
    python examples/openai_agents_example.py "Write and run a script that prints 2**100"

Per user, a persistent workspace keeps the agent's files between runs
(``sandbox_tools_for_workspace``). With ``--dry-run`` the tools are built and
called once directly, without a model (no OpenAI key needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from sandkasten import SandboxClient

try:
    from agents import Agent, Runner
except ImportError:  # the optional extra is not installed
    Agent = Runner = None  # type: ignore[assignment,misc]

from sandkasten.agents import sandbox_tools_for_workspace


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", nargs="?", default="Print the Python version and list /workspace.")
    parser.add_argument("--user", default="demo-user", help="workspace id for this user")
    parser.add_argument("--model", default="gpt-4.1-mini")
    parser.add_argument("--dry-run", action="store_true", help="call the tools without a model")
    args = parser.parse_args()

    if Agent is None:
        print("this example needs the OpenAI Agents SDK: pip install 'sandkasten[agents]'")
        return 2
    if not args.dry_run and not os.environ.get("OPENAI_API_KEY"):
        print("set OPENAI_API_KEY (or use --dry-run)")
        return 2

    async with (
        SandboxClient(
            base_url=os.environ.get("SANDKASTEN_URL", "http://127.0.0.1:8080"),
            api_key=os.environ["SANDKASTEN_API_KEY"],
        ) as client,
        sandbox_tools_for_workspace(client, args.user) as (session, tools),
    ):
        print(f"session {session.id} on workspace {args.user!r}")
        if args.dry_run:
            by_name = {tool.name: tool for tool in tools}
            print(sorted(by_name))
            print(await by_name["sandbox_exec"].on_invoke_tool(None, '{"cmd": "echo ready"}'))
            return 0
        agent = Agent(
            name="sandbox-assistant",
            instructions="You have a Linux sandbox (bash, python3). Use the tools to work.",
            tools=tools,
            model=args.model,
        )
        result = await Runner.run(agent, args.task)
        print(result.final_output)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
