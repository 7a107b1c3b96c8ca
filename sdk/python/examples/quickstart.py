"""Quick start with the async client: exec, files, streaming, workspaces.

Run against a daemon (``sandkasten serve``):

    SANDKASTEN_URL=http://127.0.0.1:8080 SANDKASTEN_API_KEY=sk-... python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

from sandkasten import SandboxClient, WorkspaceInUse


async def main() -> None:
    base_url = os.environ.get("SANDKASTEN_URL", "http://127.0.0.1:8080")
    api_key = os.environ["SANDKASTEN_API_KEY"]

    async with SandboxClient(base_url=base_url, api_key=api_key) as client:
        # An ephemeral session, destroyed when the block ends.
        async with await client.create_session() as session:
            # One persistent shell: cd and export carry over.
            await session.exec("cd /tmp && export GREETING=hello")
            result = await session.exec("echo $GREETING from $(pwd)")
            print(result.output, end="")  # hello from /tmp

            # Files (relative paths are under /workspace).
            await session.write("hello.py", "print(6 * 7)")
            print((await session.exec("python3 /workspace/hello.py")).output, end="")  # 42
            print(await session.read("hello.py"))  # print(6 * 7)

            # Output as it is produced.
            async for chunk in session.exec_stream("for i in 1 2 3; do echo $i; sleep 0.2; done"):
                if chunk.done:
                    print(f"exit {chunk.exit_code} in {chunk.cwd}")
                else:
                    print("chunk:", chunk.output, end="")

        # A persistent workspace outlives its sessions (the seed's agent pattern).
        workspace_id = f"quickstart-{uuid.uuid4().hex[:8]}"
        session1 = await client.create_session(workspace_id=workspace_id)
        await session1.write("project.py", "print('hello')")
        await session1.destroy()

        session2 = await client.create_session(workspace_id=workspace_id)
        content = await session2.read("project.py")
        print(content)  # print('hello')
        try:
            await client.delete_workspace(workspace_id)
        except WorkspaceInUse:
            print("a workspace cannot be deleted while a session mounts it")
        await session2.destroy()
        await client.delete_workspace(workspace_id)
        print("done")


if __name__ == "__main__":
    asyncio.run(main())
