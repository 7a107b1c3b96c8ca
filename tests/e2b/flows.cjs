// The official E2B JS SDK (`e2b` 2.x from npm) against the real daemon:
// its documented flows, configured only by E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY. Run by test_js_sdk.py (NODE_PATH points at the installed
// package); prints one line per step and exits non-zero on the first
// failure.
const assert = require('node:assert/strict')
const { Sandbox } = require('e2b')

function step(name) {
  console.log(`step: ${name}`)
}

async function main() {
  const tag = `js-${Date.now()}-${Math.random().toString(16).slice(2)}`
  step('create with metadata and envs')
  const sbx = await Sandbox.create({ metadata: { tag, name: 'a' }, envs: { GREETING: 'hallo' }, timeoutMs: 300_000 })
  const other = await Sandbox.create({ metadata: { tag, name: 'b' } })
  try {
    const info = await sbx.getInfo()
    assert.deepEqual(info.metadata, { tag, name: 'a' })
    assert.equal(info.templateId, 'base')

    step('files: text, bytes, streams')
    const w = await sbx.files.write('/workspace/hello.txt', 'hello from js\n')
    assert.equal(w.path, '/workspace/hello.txt')
    assert.equal(await sbx.files.read('/workspace/hello.txt'), 'hello from js\n')
    const blob = new Uint8Array(4096).map((_, i) => i % 251)
    await sbx.files.write('/workspace/bin/blob', blob.buffer)
    const back = await sbx.files.read('/workspace/bin/blob', { format: 'bytes' })
    assert.deepEqual(Buffer.from(back), Buffer.from(blob))
    const stream = await sbx.files.read('/workspace/bin/blob', { format: 'stream' })
    const chunks = []
    for await (const c of stream) chunks.push(Buffer.from(c))
    assert.deepEqual(Buffer.concat(chunks), Buffer.from(blob))
    await sbx.files.write([
      { path: '/workspace/multi/a.txt', data: 'a' },
      { path: '/workspace/multi/b.txt', data: 'b' },
    ])
    assert.equal(await sbx.files.read('/workspace/multi/b.txt'), 'b')

    step('files: list with depth, exists, makeDir, rename, getInfo, remove')
    const top = await sbx.files.list('/workspace')
    assert.ok(top.some((e) => e.name === 'bin' && e.type === 'dir'))
    assert.ok(!top.some((e) => e.path === '/workspace/bin/blob'))
    const deep = await sbx.files.list('/workspace', { depth: 2 })
    assert.ok(deep.some((e) => e.path === '/workspace/bin/blob'))
    assert.equal(await sbx.files.exists('/workspace/hello.txt'), true)
    assert.equal(await sbx.files.exists('/workspace/nope'), false)
    assert.equal(await sbx.files.makeDir('/workspace/d/e'), true)
    assert.equal(await sbx.files.makeDir('/workspace/d/e'), false)
    const moved = await sbx.files.rename('/workspace/hello.txt', '/workspace/d/e/hello.txt')
    assert.equal(moved.path, '/workspace/d/e/hello.txt')
    const gi = await sbx.files.getInfo('/workspace/d/e/hello.txt')
    assert.equal(gi.size, 14)
    assert.equal(gi.type, 'file')
    await sbx.files.remove('/workspace/d')
    assert.equal(await sbx.files.exists('/workspace/d'), false)
    await assert.rejects(sbx.files.read('/workspace/missing'))

    step('upload and download URLs')
    const up = await sbx.uploadUrl('/workspace/up.txt')
    const form = new FormData()
    form.append('file', new Blob(['by url']), 'up.txt')
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200)
    const down = await sbx.downloadUrl('/workspace/up.txt')
    assert.equal(await (await fetch(down)).text(), 'by url')

    step('setTimeout, list, connect, kill')
    const before = (await sbx.getInfo()).endAt
    await sbx.setTimeout(3_000_000)
    const after = (await sbx.getInfo()).endAt
    assert.ok(after.getTime() - before.getTime() > 2_000_000)
    const paginator = Sandbox.list({ query: { metadata: { tag } } })
    const listed = await paginator.nextItems()
    assert.deepEqual(new Set(listed.map((s) => s.sandboxId)), new Set([sbx.sandboxId, other.sandboxId]))
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.files.read('/workspace/up.txt'), 'by url')
    assert.equal(await Sandbox.kill(other.sandboxId), true)
    assert.equal(await Sandbox.kill(other.sandboxId), false)
  } finally {
    await sbx.kill()
    await Sandbox.kill(other.sandboxId)
  }
  console.log('ok')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
