"""Give an LLM a sandbox: the four tools (exec, read, write, list) as plain
functions plus JSON-schema specs, driven by a minimal tool-calling loop.

Works with any framework that takes JSON-schema tools:

- ``sandkasten.tools.openai_tool_specs()``   -> OpenAI chat completions ``tools=``
- ``sandkasten.tools.anthropic_tool_specs()`` -> Anthropic messages ``tools=``
- ``SandboxTools(session).call(name, arguments)`` runs a tool call and returns
  the string to send back to the model.

By default a scripted "model" issues the tool calls, so the example runs
without an LLM. With ``--openai`` (needs ``pip install openai`` and
``OPENAI_API_KEY``) a real model drives the same loop.

    SANDKASTEN_URL=http://127.0.0.1:8080 SANDKASTEN_API_KEY=sk-... python examples/agent_tools.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from sandkasten import SandboxClient
from sandkasten.tools import SandboxTools, openai_tool_specs

Message = dict[str, Any]
Model = Callable[[list[Message]], Awaitable[Message]]

TASK = "Write fib.py that prints the first 10 Fibonacci numbers, run it, and report the output."


async def agent_loop(tools: SandboxTools, model: Model, task: str, max_turns: int = 10) -> str:
    """Ask ``model`` until it answers without tool calls; run each tool call in the sandbox."""
    messages: list[Message] = [
        {"role": "system", "content": "You have a Linux sandbox. Use the tools."},
        {"role": "user", "content": task},
    ]
    for _ in range(max_turns):
        reply = await model(messages)
        messages.append(reply)
        calls = reply.get("tool_calls") or []
        if not calls:
            return str(reply.get("content") or "")
        for call in calls:
            fn = call["function"]
            result = await tools.call(fn["name"], fn["arguments"])
            print(f"--> {fn['name']}({fn['arguments']})\n{result}\n")
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return "(gave up after max_turns)"


def scripted_model() -> Model:
    """A stand-in for an LLM: a fixed plan of tool calls, then a final answer."""
    fib = "a, b = 0, 1\nfor _ in range(10):\n    print(a)\n    a, b = b, a + b\n"
    plan = [
        ("sandbox_write_file", {"path": "fib.py", "content": fib}),
        ("sandbox_list_files", {"path": "/workspace"}),
        ("sandbox_exec", {"cmd": "python3 fib.py | tr '\\n' ' '"}),
        ("sandbox_read_file", {"path": "fib.py"}),
    ]

    async def model(messages: list[Message]) -> Message:
        done = sum(1 for m in messages if m["role"] == "tool")
        if done < len(plan):
            name, args = plan[done]
            return {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": f"call_{done}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(args)},
                    }
                ],
            }
        tool_results = [m["content"] for m in messages if m["role"] == "tool"]
        output = tool_results[2]  # the result of sandbox_exec
        return {"role": "assistant", "content": f"fib.py ran:\n{output}"}

    return model


def openai_model(model_name: str) -> Model:
    """A real model through the OpenAI chat completions API (optional dependency)."""
    try:
        from openai import AsyncOpenAI
    except ImportError as exc:
        raise SystemExit("--openai needs the openai package: pip install openai") from exc
    client = AsyncOpenAI()

    async def model(messages: list[Message]) -> Message:
        response = await client.chat.completions.create(
            model=model_name, messages=messages, tools=openai_tool_specs()
        )
        return response.choices[0].message.model_dump(exclude_none=True)

    return model


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openai", metavar="MODEL", help="drive the loop with an OpenAI model")
    args = parser.parse_args()
    model = openai_model(args.openai) if args.openai else scripted_model()

    async with (
        SandboxClient(
            base_url=os.environ.get("SANDKASTEN_URL", "http://127.0.0.1:8080"),
            api_key=os.environ["SANDKASTEN_API_KEY"],
        ) as client,
        await client.create_session() as session,
    ):
        answer = await agent_loop(SandboxTools(session), model, TASK)
    print("final answer:", answer)


if __name__ == "__main__":
    asyncio.run(main())
