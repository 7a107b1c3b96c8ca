// The official MCP TypeScript SDK (npm @modelcontextprotocol/sdk) against a
// running daemon over streamable HTTP.
// Usage: node client.mjs SDK_DIR URL KEY   (SDK_DIR: the installed package)
// Run by scripts/mcp-clients; exits non-zero at the first check that fails.
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";

const [sdkDir, url, key] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(`${sdkDir}/dist/esm/${p}`).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { CallToolResultSchema } = await load("types.js");

const ok = (what) => console.log(`  ok: ${what}`);

// Without the key: the transport fails with the daemon's 401.
{
  const c = new Client({ name: "sk-test", version: "1" });
  await assert.rejects(c.connect(new StreamableHTTPClientTransport(new URL(`${url}/mcp`))));
  ok("no key: refused");
}

const client = new Client({ name: "sk-test", version: "1" });
const transport = new StreamableHTTPClientTransport(new URL(`${url}/mcp`), {
  requestInit: { headers: { Authorization: `Bearer ${key}` } },
});
await client.connect(transport);
assert.ok(transport.sessionId, "no Mcp-Session-Id from initialize");
ok(`initialize: protocol ${transport.protocolVersion ?? "?"}, session ${transport.sessionId.slice(0, 8)}…`);

const { tools } = await client.listTools();
const names = tools.map((t) => t.name);
for (const want of ["create_sandbox", "run_command", "read_file", "write_file", "destroy_sandbox"]) {
  assert.ok(names.includes(want), want);
}
for (const t of tools) {
  assert.equal(t.outputSchema?.type, "object", `${t.name} has no output schema`);
}
ok(`${tools.length} tools, each with an output schema (the SDK validates every result, errors too)`);

const call = (name, args, opts) => client.callTool({ name, arguments: args }, CallToolResultSchema, opts);
const data = async (name, args) => {
  const r = await call(name, args);
  assert.ok(!r.isError, `${name}: ${JSON.stringify(r)}`);
  return r.structuredContent;
};

const sid = (await data("create_sandbox", {})).id;
await data("write_file", { session_id: sid, path: "hello.js", content: "console.log(6 * 7)\n" });
let out = await data("run_command", { session_id: sid, cmd: "command -v node >/dev/null && node hello.js || python3 -c 'print(42)'" });
assert.equal(out.output, "42\n");
const read = await data("read_file", { session_id: sid, path: "hello.js" });
assert.equal(read.content, "console.log(6 * 7)\n");
ok("agent flow: create, write, run, read");

// Progress notifications carry the output.
const seen = [];
const r = await call("run_command", { session_id: sid, cmd: "echo a; sleep 0.3; echo b" }, {
  onprogress: (p) => seen.push(p.message ?? ""),
});
assert.equal(r.structuredContent.output, "a\nb\n");
assert.equal(seen.join(""), "a\nb\n");
ok(`progress: ${seen.length} notifications`);

// Cancellation through an AbortSignal: notifications/cancelled; the command
// stops. Aborted once the command's first output arrives.
const abort = new AbortController();
const long = call("run_command", { session_id: sid, cmd: "echo started; sleep 300; touch /tmp/survived" }, {
  signal: abort.signal,
  onprogress: (p) => { if ((p.message ?? "").includes("started")) abort.abort(); },
});
await assert.rejects(long);
out = await data("run_command", { session_id: sid, cmd: "pgrep -f 'sleep 300' || echo none; test -e /tmp/survived && echo survived || true" });
assert.equal(out.output, "none\n");
ok("cancelled run_command stopped inside the sandbox");

const bad = await call("run_command", { session_id: sid, cmd: 5 });
assert.ok(bad.isError);
assert.equal(bad.structuredContent.error_code, "INVALID_REQUEST");
const fail = await call("run_command", { session_id: sid, cmd: "exit 3" });
assert.ok(fail.isError);
assert.equal(fail.structuredContent.exit_code, 3);
await assert.rejects(call("no_such_tool", {}));
ok("wrong argument type and non-zero exit: tool errors; unknown tool: protocol error");

assert.equal((await data("pause_sandbox", { session_id: sid })).status, "paused");
assert.equal((await data("resume_sandbox", { session_id: sid })).status, "running");
const listed = await data("list_sandboxes", {});
assert.ok(listed.sandboxes.some((x) => x.id === sid));
ok("pause_sandbox, resume_sandbox, list_sandboxes");

await data("destroy_sandbox", { session_id: sid });
await transport.terminateSession();
await client.close();
console.log("mcp typescript (http): all checks hold");
