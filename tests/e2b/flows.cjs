// The official E2B JS SDK (`e2b` 2.x from npm) against the real daemon:
// its documented flows, configured only by E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY. Run by test_js_sdk.py (NODE_PATH points at the installed
// package); prints one line per step and exits non-zero on the first
// failure.
const assert = require('node:assert/strict')
const { Sandbox, CommandExitError, FilesystemEventType, NotFoundError } = require('e2b')

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

    step('files: watchDir (recursive), user root vs user')
    const events = []
    let wake = () => {}
    const seenAll = (wanted) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watch: ${JSON.stringify(events)}`)), 30_000)
      wake = () => {
        if (wanted.every(([n, t]) => events.some((e) => e.name === n && e.type === t))) {
          clearTimeout(timer)
          resolve()
        }
      }
      wake()
    })
    await sbx.files.makeDir('/workspace/watched')
    const watcher = await sbx.files.watchDir('/workspace/watched', (e) => { events.push(e); wake() }, { recursive: true })
    await sbx.commands.run('mkdir /workspace/watched/sub && echo w > /workspace/watched/sub/by-cmd.txt')
    await seenAll([['sub', FilesystemEventType.CREATE], ['sub/by-cmd.txt', FilesystemEventType.CREATE]])
    await sbx.commands.run('rm /workspace/watched/sub/by-cmd.txt')
    await seenAll([['sub/by-cmd.txt', FilesystemEventType.REMOVE]])
    await watcher.stop()
    await assert.rejects(sbx.files.watchDir('/workspace/no-such-dir', () => {}), (e) => e instanceof NotFoundError)
    await sbx.commands.run('echo r > /workspace/root-only.txt && chmod 644 /workspace/root-only.txt', { user: 'root' })
    await sbx.files.write('/workspace/root-only.txt', 'by root', { user: 'root' })
    assert.equal(await sbx.files.read('/workspace/root-only.txt'), 'by root')
    await assert.rejects(sbx.files.write('/workspace/root-only.txt', 'by user', { user: 'user' }))
    assert.equal((await sbx.files.getInfo('/workspace/root-only.txt', { user: 'root' })).owner, 'root')

    step('upload and download URLs')
    const up = await sbx.uploadUrl('/workspace/up.txt')
    const form = new FormData()
    form.append('file', new Blob(['by url']), 'up.txt')
    const res = await fetch(up, { method: 'POST', body: form })
    assert.equal(res.status, 200)
    const down = await sbx.downloadUrl('/workspace/up.txt')
    assert.equal(await (await fetch(down)).text(), 'by url')

    step('commands: foreground, callbacks, exit errors, envs, user')
    const r = await sbx.commands.run('echo out; echo err >&2; echo $GREETING')
    assert.equal(r.stdout, 'out\nhallo\n')
    assert.equal(r.stderr, 'err\n')
    const seen = []
    await sbx.commands.run('echo a; echo b', { onStdout: (d) => seen.push(d) })
    assert.equal(seen.join(''), 'a\nb\n')
    await assert.rejects(sbx.commands.run('exit 4'), (e) => e instanceof CommandExitError && e.exitCode === 4)
    assert.equal((await sbx.commands.run('id -u', { user: 'root' })).stdout, '0\n')
    assert.equal((await sbx.commands.run('echo $X', { envs: { X: 'y' }, cwd: '/tmp' })).stdout, 'y\n')

    step('commands: background, stdin, list, kill')
    const cat = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(cat.pid, 'piped\n')
    await sbx.commands.closeStdin(cat.pid)
    assert.equal((await cat.wait()).stdout, 'piped\n')
    const sleeper = await sbx.commands.run('sleep 60', { background: true })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid))
    assert.equal(await sleeper.kill(), true)
    await assert.rejects(sleeper.wait(), (e) => e instanceof CommandExitError)
    assert.equal(await sbx.commands.kill(sleeper.pid), false)

    step('pty: create, sendInput, resize, kill')
    let out = ''
    let notify = () => {}
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += Buffer.from(d).toString(); notify() } })
    const until = (text) => new Promise((resolve) => {
      notify = () => { if (out.includes(text)) resolve() }
      notify()
    })
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo $((6*7))\n'))
    await until('42')
    await sbx.pty.resize(term.pid, { cols: 100, rows: 30 })
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size\n'))
    await until('30 100')
    assert.equal(await sbx.pty.kill(term.pid), true)

    step('fork, createSnapshot, listSnapshots, create from a snapshot, deleteSnapshot')
    await sbx.files.write('/workspace/forked.txt', 'base')
    const [child] = await sbx.fork({ count: 1, timeoutMs: 600_000 })
    assert.ok(child instanceof Sandbox, String(child))
    try {
      assert.notEqual(child.sandboxId, sbx.sandboxId)
      assert.equal(await child.files.read('/workspace/forked.txt'), 'base')
      await child.files.write('/workspace/forked.txt', 'child')
      assert.equal(await sbx.files.read('/workspace/forked.txt'), 'base')
    } finally {
      await child.kill()
    }
    const snap = await sbx.createSnapshot({ name: `snap-${tag}` })
    assert.ok(snap.snapshotId.startsWith('ssnap-'))
    assert.deepEqual(snap.names, [`snap-${tag}`])
    const snaps = await sbx.listSnapshots().nextItems()
    assert.deepEqual(snaps.map((s) => s.snapshotId), [snap.snapshotId])
    const fromSnap = await Sandbox.create(snap.snapshotId)
    try {
      assert.equal(await fromSnap.files.read('/workspace/forked.txt'), 'base')
    } finally {
      await fromSnap.kill()
    }
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)

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
