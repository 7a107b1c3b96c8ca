//! Chaos: the daemon SIGKILLed at seeded random moments under mixed
//! traffic from several clients (creates with and without a workspace or
//! a network, execs that change shell state, uploads, workspace
//! snapshots, pool refills, destroys), round after round on one data dir;
//! a session's PID 1 killed from the host while its neighbours work; and
//! a docker engine of the test's own SIGKILLed and restarted mid-exec.
//!
//! After every restart: each session the API lists answers an exec and
//! keeps the shell state and files whose requests were answered; no
//! session whose create was answered is missing unless its destroy was
//! answered; a destroyed one never comes back; answered snapshots are
//! listed; the store's live rows are the listed sessions and its pool
//! rows the other sandboxes on the host. At the end, with everything
//! destroyed and the daemon stopped, nothing of the data dir is left on
//! the host: no sandbox process, cgroup, mount, loop device or network
//! link.
//!
//! The seed is printed (`chaos seed: N`); `SANDKASTEN_CHAOS_SEED=N`
//! replays its choices (the kill moments and every client's operations;
//! the interleaving is the scheduler's).

mod common;

use common::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Daemon kills (and restarts) of the SIGKILL test.
const ROUNDS: usize = 8;
/// Client threads sending traffic during a round.
const CLIENTS: usize = 4;
/// A client keeps at most this many sessions of its own.
const SESSIONS_PER_CLIENT: usize = 3;
/// Workspaces the sessions draw from (each a btrfs image with a quota on
/// native, so snapshots work there).
const WORKSPACES: usize = 2;
/// Sandboxes the pool keeps warm.
const POOL: usize = 2;

// ---------------------------------------------------------------------------
// Seeded choices
// ---------------------------------------------------------------------------

/// splitmix64: small, seedable, good enough to draw operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The run's seed: `SANDKASTEN_CHAOS_SEED` or a fresh one, printed.
fn seed() -> u64 {
    let seed = match std::env::var("SANDKASTEN_CHAOS_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SANDKASTEN_CHAOS_SEED={s:?} is not a u64")),
        Err(_) => random_u64(),
    };
    eprintln!("chaos seed: {seed} (replay with SANDKASTEN_CHAOS_SEED={seed})");
    seed
}

// ---------------------------------------------------------------------------
// What the clients were told
// ---------------------------------------------------------------------------

/// A session whose create was answered with 201, and what was answered
/// since.
#[derive(Debug, Clone)]
struct Known {
    owner: usize,
    workspace: Option<String>,
    /// `CHAOS_<n>` variables whose export was answered.
    vars: BTreeSet<u64>,
    /// Files whose upload was answered, with their content.
    files: Vec<(String, Vec<u8>)>,
}

#[derive(Default)]
struct Model {
    /// Sessions the API must still list.
    live: BTreeMap<String, Known>,
    /// Sessions whose destroy was sent but not answered: either way is
    /// fine, but one that is listed must work.
    maybe_gone: BTreeSet<String>,
    /// Sessions whose destroy was answered: never listed again.
    destroyed: BTreeSet<String>,
    /// Workspace snapshots whose create was answered.
    snapshots: Vec<(String, String)>,
    /// Every sandbox id ever seen (API or host), for the final leak check.
    seen: BTreeSet<String>,
    /// Answers that break the contract (5xx, wrong output, ...).
    findings: Vec<String>,
    ops: BTreeMap<&'static str, u64>,
    unanswered: u64,
}

impl Model {
    fn count(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }
}

/// One round's shared state.
struct Round<'a> {
    d: &'a Daemon,
    model: &'a Mutex<Model>,
    workspaces: &'a [String],
    /// Set when the daemon has been killed: clients stop.
    stop: &'a AtomicBool,
    round: usize,
    op_counter: &'a AtomicU64,
}

/// What came of one request: an answer, or none (the daemon died).
enum Outcome {
    Answer(Resp),
    NoAnswer,
}

fn send(rb: reqwest::blocking::RequestBuilder) -> Outcome {
    match rb.send() {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text();
            match text {
                Ok(text) => Outcome::Answer(Resp {
                    status,
                    json: serde_json::from_str(&text).unwrap_or(Value::Null),
                    text,
                    content_type: String::new(),
                }),
                // The body was cut: the daemon died while answering.
                Err(_) => Outcome::NoAnswer,
            }
        }
        Err(_) => Outcome::NoAnswer,
    }
}

impl Round<'_> {
    fn finding(&self, what: String) {
        self.model
            .lock()
            .unwrap()
            .findings
            .push(format!("round {}: {what}", self.round));
    }

    /// A session of this client (created and not destroyed), if any.
    fn pick(&self, owner: usize, rng: &mut Rng) -> Option<(String, Known)> {
        let m = self.model.lock().unwrap();
        let mine: Vec<(&String, &Known)> =
            m.live.iter().filter(|(_, k)| k.owner == owner).collect();
        if mine.is_empty() {
            return None;
        }
        let (id, k) = mine[rng.below(mine.len() as u64) as usize];
        Some((id.clone(), k.clone()))
    }

    fn mine(&self, owner: usize) -> usize {
        let m = self.model.lock().unwrap();
        m.live.values().filter(|k| k.owner == owner).count()
    }

    /// One client: draws operations until the daemon dies.
    fn client(&self, owner: usize, mut rng: Rng) {
        while !self.stop.load(Ordering::SeqCst) {
            let n = self.op_counter.fetch_add(1, Ordering::SeqCst);
            let mine = self.mine(owner);
            let roll = rng.below(100);
            let answered = if mine == 0 || (roll < 20 && mine < SESSIONS_PER_CLIENT) {
                self.create(owner, &mut rng)
            } else if roll < 55 {
                self.exec(owner, n, &mut rng)
            } else if roll < 75 {
                self.upload(owner, n, &mut rng)
            } else if roll < 85 {
                self.snapshot(owner, &mut rng)
            } else if roll < 90 {
                self.pause(owner, &mut rng)
            } else {
                self.destroy(owner, &mut rng)
            };
            if !answered {
                self.model.lock().unwrap().unanswered += 1;
                return;
            }
        }
    }

    fn create(&self, owner: usize, rng: &mut Rng) -> bool {
        let mut body = json!({});
        let workspace = match rng.below(3) {
            0 => Some(self.workspaces[rng.below(self.workspaces.len() as u64) as usize].clone()),
            _ => None,
        };
        if let Some(ws) = &workspace {
            body["workspace_id"] = json!(ws);
        }
        // (A remote engine's containers have no network: 400 UNSUPPORTED.)
        if !on_remote_engine() && rng.below(4) == 0 {
            body["network"] = json!({"mode": "full"});
        }
        self.model.lock().unwrap().count("create");
        let rb = self
            .d
            .request(reqwest::Method::POST, "/v1/sessions")
            .json(&body);
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        if r.status != 201 {
            self.finding(format!("create {body} answered {} {}", r.status, r.text));
            return true;
        }
        if r.json["acquire_source"] == "pool" {
            self.model
                .lock()
                .unwrap()
                .count("create served by the pool");
        }
        if body.get("network").is_some() {
            self.model.lock().unwrap().count("create with a network");
        }
        let Some(id) = r.json["id"].as_str() else {
            self.finding(format!("create answered 201 without an id: {}", r.text));
            return true;
        };
        self.d.home.remember(id);
        let mut m = self.model.lock().unwrap();
        m.seen.insert(id.to_string());
        m.live.insert(
            id.to_string(),
            Known {
                owner,
                workspace,
                vars: BTreeSet::new(),
                files: Vec::new(),
            },
        );
        true
    }

    fn exec(&self, owner: usize, n: u64, rng: &mut Rng) -> bool {
        let Some((id, _)) = self.pick(owner, rng) else {
            return true;
        };
        // Some execs take a while, so that kills find commands running.
        let cmd = match rng.below(3) {
            0 => format!(
                "sleep 0.{}; export CHAOS_{n}={n}; echo {n}",
                1 + rng.below(4)
            ),
            _ => format!("export CHAOS_{n}={n}; echo {n}"),
        };
        self.model.lock().unwrap().count("exec");
        let rb = self
            .d
            .request(reqwest::Method::POST, &format!("/v1/sessions/{id}/exec"))
            .json(&json!({ "cmd": cmd }));
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        if r.status != 200 || r.json["exit_code"] != 0 || r.json["output"] != format!("{n}\n") {
            self.finding(format!("exec {cmd:?} in {id}: {} {}", r.status, r.text));
            return true;
        }
        if let Some(k) = self.model.lock().unwrap().live.get_mut(&id) {
            k.vars.insert(n);
        }
        true
    }

    fn upload(&self, owner: usize, n: u64, rng: &mut Rng) -> bool {
        let Some((id, _)) = self.pick(owner, rng) else {
            return true;
        };
        let size = 1 + rng.below(16 * 1024) as usize;
        let data = rng.bytes(size);
        let name = format!("chaos-{n}.bin");
        let form = Form::new()
            .text("path", "/workspace/chaos")
            .part("file", Part::bytes(data.clone()).file_name(name.clone()));
        self.model.lock().unwrap().count("upload");
        let rb = self
            .d
            .request(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/fs/upload"),
            )
            .multipart(form);
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        let path = format!("/workspace/chaos/{name}");
        if r.status != 200 || r.json["paths"] != json!([path]) {
            self.finding(format!("upload {path} to {id}: {} {}", r.status, r.text));
            return true;
        }
        if let Some(k) = self.model.lock().unwrap().live.get_mut(&id) {
            k.files.push((path, data));
        }
        true
    }

    fn snapshot(&self, owner: usize, rng: &mut Rng) -> bool {
        let ws = match self.pick(owner, rng) {
            Some((
                _,
                Known {
                    workspace: Some(ws),
                    ..
                },
            )) => ws,
            _ => self.workspaces[rng.below(self.workspaces.len() as u64) as usize].clone(),
        };
        self.model.lock().unwrap().count("snapshot");
        let rb = self
            .d
            .request(
                reqwest::Method::POST,
                &format!("/v1/workspaces/{ws}/snapshots"),
            )
            .json(&json!({"label": "chaos"}));
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        match (r.status, r.json["id"].as_str()) {
            (201, Some(snap)) => {
                let mut m = self.model.lock().unwrap();
                m.snapshots.push((ws, snap.to_string()));
            }
            // The workspace exists once a session used it.
            (404, _) if r.error_code() == "WORKSPACE_NOT_FOUND" => {}
            // Docker volumes have no snapshots (docs/api.md).
            (400, _) if on_docker() && r.error_code() == "UNSUPPORTED" => {}
            _ => self.finding(format!("snapshot of {ws}: {} {}", r.status, r.text)),
        }
        true
    }

    /// Pauses a session (the next call that needs its sandbox resumes
    /// it).
    fn pause(&self, owner: usize, rng: &mut Rng) -> bool {
        let Some((id, _)) = self.pick(owner, rng) else {
            return true;
        };
        self.model.lock().unwrap().count("pause");
        let rb = self
            .d
            .request(reqwest::Method::POST, &format!("/v1/sessions/{id}/pause"));
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        let paused = r.status == 200 && r.json["status"] == "paused";
        let again = r.status == 409 && r.error_code() == "SESSION_NOT_RUNNING";
        if !paused && !again {
            self.finding(format!("pause {id}: {} {}", r.status, r.text));
        }
        true
    }

    fn destroy(&self, owner: usize, rng: &mut Rng) -> bool {
        let Some((id, _)) = self.pick(owner, rng) else {
            return true;
        };
        {
            let mut m = self.model.lock().unwrap();
            m.count("destroy");
            m.live.remove(&id);
            m.maybe_gone.insert(id.clone());
        }
        let rb = self
            .d
            .request(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"));
        let Outcome::Answer(r) = send(rb) else {
            return false;
        };
        let mut m = self.model.lock().unwrap();
        m.maybe_gone.remove(&id);
        m.destroyed.insert(id.clone());
        if r.status != 200 {
            drop(m);
            self.finding(format!("destroy {id}: {} {}", r.status, r.text));
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Checks after a restart
// ---------------------------------------------------------------------------

/// The store's live session rows and pool rows (read-only, beside the
/// running daemon: WAL readers do not block it).
fn store_rows(home: &DataDir) -> (BTreeSet<String>, BTreeSet<String>) {
    let db = rusqlite::Connection::open_with_flags(
        home.data.join("sandkasten.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening the daemon's store read-only");
    let ids = |sql: &str| -> BTreeSet<String> {
        let mut st = db.prepare(sql).expect("preparing a store query");
        st.query_map([], |r| r.get::<_, String>(0))
            .expect("querying the store")
            .map(|r| r.expect("a store row"))
            .collect()
    };
    (
        ids("SELECT id FROM sessions WHERE state IN \
             ('creating', 'running', 'paused', 'hibernated', 'destroying')"),
        ids("SELECT id FROM pool_entries"),
    )
}

fn pool_state(d: &Daemon) -> Value {
    d.get("/v1/pool").expect(200, "GET /v1/pool")["images"][default_image()].clone()
}

/// Checks everything the clients were told against the restarted daemon
/// and the host; adopts listed sessions whose create went unanswered.
fn check_after_restart(d: &Daemon, model: &Mutex<Model>, round: usize) {
    let listed: BTreeMap<String, Value> = d
        .list_sessions()
        .into_iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s))
        .collect();
    let mut m = model.lock().unwrap();
    m.seen.extend(listed.keys().cloned());
    for id in host_sandbox_ids(&d.home) {
        d.home.remember(&id);
        m.seen.insert(id);
    }
    let mut problems = Vec::new();
    for id in m.live.keys() {
        if !listed.contains_key(id) {
            problems.push(format!("session {id} (create answered 201) is lost"));
        }
    }
    for id in m.destroyed.iter().filter(|id| listed.contains_key(*id)) {
        problems.push(format!("session {id} (destroy answered) is listed again"));
    }
    // A listed session whose create or destroy was not answered is
    // adopted: it must work like the others and is destroyed at the end.
    let owners = CLIENTS.max(1);
    for (i, id) in listed.keys().enumerate() {
        if !m.live.contains_key(id) && !m.destroyed.contains(id) {
            m.maybe_gone.remove(id);
            let ws = listed[id]["workspace_id"].as_str().map(str::to_string);
            m.live.insert(
                id.clone(),
                Known {
                    owner: i % owners,
                    workspace: ws.filter(|w| w != id),
                    vars: BTreeSet::new(),
                    files: Vec::new(),
                },
            );
        }
    }
    m.maybe_gone.clear();
    let live = m.live.clone();
    let snapshots = m.snapshots.clone();
    drop(m);

    for (id, k) in &live {
        let Some(info) = listed.get(id) else { continue };
        if info["status"] != "running" && info["status"] != "paused" {
            problems.push(format!("session {id} listed as {}", info["status"]));
            continue;
        }
        if !sandbox_running(id) {
            problems.push(format!(
                "session {id} is listed but its sandbox does not run"
            ));
        }
        let r = d.exec_with(
            id,
            json!({"cmd": "env | grep '^CHAOS_' | cut -d= -f2 | sort -n"}),
        );
        if r.status != 200 || r.json["exit_code"].as_i64().is_none() {
            problems.push(format!(
                "exec in listed session {id}: {} {}",
                r.status, r.text
            ));
            continue;
        }
        let vars: BTreeSet<u64> = r.json["output"]
            .as_str()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let missing: Vec<&u64> = k.vars.difference(&vars).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "session {id} lost the shell state of answered execs: CHAOS_{missing:?}"
            ));
        }
        for (path, data) in &k.files {
            let r = d.read_resp(id, path);
            let got = r.json["content_base64"].as_str().map(unb64);
            if r.status != 200 || got.as_deref() != Some(&data[..]) {
                problems.push(format!(
                    "session {id}: answered upload {path} ({} bytes) reads back as {} {:.200}",
                    data.len(),
                    r.status,
                    r.text
                ));
            }
        }
    }
    let mut by_ws: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (ws, snap) in &snapshots {
        let have = by_ws.entry(ws).or_insert_with(|| {
            let v = d
                .get(&format!("/v1/workspaces/{ws}/snapshots"))
                .expect(200, "listing a workspace's snapshots");
            v["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        });
        if !have.contains(snap) {
            problems.push(format!("snapshot {snap} of {ws} (answered 201) is gone"));
        }
    }

    // The store agrees with what runs, once the pool is full again.
    let waited = Instant::now();
    let full = wait_for(Duration::from_secs(30), || {
        let p = pool_state(d);
        p["idle"] == POOL as u64 && p["in_flight"] == 0
    });
    if waited.elapsed() > Duration::from_secs(5) {
        eprintln!(
            "round {round}: the pool took {:?} to refill; the daemons' warnings:\n{}",
            waited.elapsed(),
            daemon_warnings(&d.home)
        );
    }
    if !full {
        problems.push(format!("the pool did not refill: {}", pool_state(d)));
    }
    let listed_now: BTreeSet<String> = d.listed_ids().into_iter().collect();
    let (rows, pool_rows) = store_rows(&d.home);
    let host = host_sandbox_ids(&d.home);
    if rows != listed_now {
        problems.push(format!(
            "the store's live sessions {rows:?} are not the listed ones {listed_now:?}"
        ));
    }
    let others: BTreeSet<String> = host.difference(&listed_now).cloned().collect();
    if others != pool_rows {
        problems.push(format!(
            "sandboxes on the host that are not sessions {others:?} are not the store's \
             pool entries {pool_rows:?}"
        ));
    }
    // A killed daemon dies whole: nothing it forked lives on with its
    // descriptors (the store's locks, loop devices, workspace mounts).
    for p in daemon_processes_of(&d.home, Some(d.pid())) {
        problems.push(format!("a process of a killed daemon still runs: {p}"));
    }
    for id in listed_now.difference(&host) {
        problems.push(format!("listed session {id} has no sandbox on the host"));
    }
    for id in &pool_rows {
        d.home.remember(id);
        if !sandbox_running(id) {
            problems.push(format!("pooled sandbox {id} does not run"));
        }
    }
    model.lock().unwrap().seen.extend(host);
    assert!(
        problems.is_empty(),
        "after restart {round}:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// Host leftovers of a data dir
// ---------------------------------------------------------------------------

/// Pids of `sandkasten-agent init` processes whose mounts name the data
/// dir (a sandbox of this daemon, whatever its id).
fn agent_inits_of(home: &DataDir) -> Vec<i32> {
    let root = home.root.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut args = cmd.split(|&b| b == 0);
        let prog = args.next().unwrap_or_default();
        if !prog.ends_with(b"sandkasten-agent") || args.next() != Some(b"init") {
            continue;
        }
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if mounts.contains(&root) {
            out.push(pid);
        }
    }
    out
}

/// Processes of daemons on this data dir (their command line names its
/// config) other than `live` and its children: what a killed daemon left
/// running (a helper it forked, holding its descriptors).
fn daemon_processes_of(home: &DataDir, live: Option<i32>) -> Vec<String> {
    let root = home.root.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // The live daemon and the helpers it has right now.
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("PPid:")
                    .and_then(|v| v.trim().parse::<i32>().ok())
            });
        if live.is_some() && (Some(pid) == live || ppid == live) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" serve ") && cmd.contains(&root) {
            out.push(format!("{pid} ({cmd})"));
        }
    }
    out
}

/// Loop devices whose backing file lies in the data dir.
fn loop_devices_of(home: &DataDir) -> Vec<String> {
    let root = home.root.to_string_lossy().to_string();
    loop_devices()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&root))
        .map(|(name, backing)| format!("/dev/{name} ({backing})"))
        .collect()
}

/// This daemon's link prefix (`skn<tag>`).
fn link_prefix(d: &Daemon) -> Option<String> {
    net_tag(d).map(|t| format!("skn{t}"))
}

/// Everything of the data dir still on the host.
fn leftovers(home: &DataDir, seen: &BTreeSet<String>, prefix: Option<&str>) -> Vec<String> {
    let mut left = Vec::new();
    for id in seen {
        for l in sandbox_leftovers(home, id) {
            left.push(format!("sandbox {id}: {l}"));
        }
    }
    let host = host_sandbox_ids(home);
    if !host.is_empty() {
        left.push(format!("sandboxes on the host {host:?}"));
    }
    if !on_docker() {
        let inits = agent_inits_of(home);
        if !inits.is_empty() {
            left.push(format!("sandkasten-agent init processes {inits:?}"));
        }
    }
    let daemons = daemon_processes_of(home, None);
    if !daemons.is_empty() {
        left.push(format!("processes of stopped daemons {daemons:?}"));
    }
    let mounts = mountinfo_lines_containing(&home.root.to_string_lossy());
    if !mounts.is_empty() {
        left.push(format!("mounts {mounts:?}"));
    }
    let loops = loop_devices_of(home);
    if !loops.is_empty() {
        left.push(format!("loop devices {loops:?}"));
    }
    if let Some(p) = prefix {
        let links = links_with(p);
        if !links.is_empty() {
            left.push(format!("network links {links:?}"));
        }
    }
    left
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

fn chaos_config() -> String {
    let mut yaml = format!(
        "pool:\n  enabled: true\n  images:\n    \"{}\": {POOL}\n",
        default_image()
    );
    if !on_remote_engine() {
        yaml.push_str("network:\n  allow_full: true\n");
    }
    yaml
}

fn chaos_options() -> Options {
    Options {
        config: Some(chaos_config()),
        disable_pool: false,
        ..Options::default()
    }
}

fn start(home: &Arc<DataDir>) -> Daemon {
    Daemon::start_with(home, chaos_options())
}

#[test]
fn sigkill_at_random_points_under_mixed_traffic_loses_nothing_and_leaks_nothing() {
    let seed = seed();
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let home = DataDir::new();
    let model = Mutex::new(Model::default());
    let workspaces: Vec<String> = (0..WORKSPACES)
        .map(|i| ws_id(&format!("chaos{i}")))
        .collect();
    let op_counter = AtomicU64::new(1);
    let mut prefix = None;
    let mut d = start(&home);
    for round in 1..=ROUNDS {
        prefix = prefix.or_else(|| link_prefix(&d));
        let stop = AtomicBool::new(false);
        let r = Round {
            d: &d,
            model: &model,
            workspaces: &workspaces,
            stop: &stop,
            round,
            op_counter: &op_counter,
        };
        // Early kills land in the start-up's pool fills and the first
        // creates; later ones in the thick of the traffic.
        let kill_after = Duration::from_millis(50 + rng.below(2500));
        let seeds: Vec<u64> = (0..CLIENTS).map(|_| rng.next()).collect();
        std::thread::scope(|s| {
            for (owner, cs) in seeds.iter().enumerate() {
                let r = &r;
                let cs = *cs;
                s.spawn(move || r.client(owner, Rng::new(cs)));
            }
            std::thread::sleep(kill_after);
            d.kill_9();
            stop.store(true, Ordering::SeqCst);
        });
        // What a half-made sandbox left on disk is the next start's to
        // clean up; remember its id for the final check.
        {
            let mut m = model.lock().unwrap();
            for id in host_sandbox_ids(&home) {
                home.remember(&id);
                m.seen.insert(id);
            }
            let findings = std::mem::take(&mut m.findings);
            assert!(
                findings.is_empty(),
                "seed {seed}: answers that break the contract:\n  {}",
                findings.join("\n  ")
            );
        }
        eprintln!(
            "round {round}: killed after {kill_after:?} ({:?} into the test)",
            started.elapsed()
        );
        // Every third round, on average, the next start is killed too, in
        // its recovery or its first pool fills.
        if rng.below(3) == 0 {
            let during_start = Duration::from_millis(rng.below(600));
            let mut starting = Daemon::spawn_unwaited(&home, &chaos_options());
            std::thread::sleep(during_start);
            starting.kill().unwrap();
            starting.wait().unwrap();
            let mut m = model.lock().unwrap();
            m.count("kill during a start");
            for id in host_sandbox_ids(&home) {
                home.remember(&id);
                m.seen.insert(id);
            }
            eprintln!("round {round}: the next start killed after {during_start:?}");
        }
        // A start and its checks take a second or two; one that takes far
        // longer is reported while it hangs.
        let (done, watched) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if watched.recv_timeout(Duration::from_secs(15)).is_err() {
                eprintln!(
                    "round {round}: the start and its checks still run after 15 s:\n{}",
                    sandkasten_processes()
                );
            }
        });
        let restarted = Instant::now();
        d = start(&home);
        let started_in = restarted.elapsed();
        check_after_restart(&d, &model, round);
        let _ = done.send(());
        let _ = watchdog.join();
        if restarted.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "round {round}: the start took {started_in:?}, its checks {:?}; {}",
                restarted.elapsed() - started_in,
                keep_logs(&home),
            );
        }
    }

    // The end: destroy everything through the API, stop, and look for
    // anything of the data dir left on the host.
    let live: Vec<String> = model.lock().unwrap().live.keys().cloned().collect();
    for id in &live {
        d.delete(id);
    }
    for ws in &workspaces {
        let r = d.del(&format!("/v1/workspaces/{ws}"));
        assert!(
            r.status == 200 || r.status == 404,
            "deleting workspace {ws}: {} {}\n{}\n{}",
            r.status,
            r.text,
            workspace_holders(&d.home, ws),
            daemon_warnings(&d.home)
        );
    }
    assert!(
        d.list_sessions().is_empty(),
        "sessions left after destroying all"
    );
    let (status, _) = d.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");
    let seen = model.lock().unwrap().seen.clone();
    let prefix = prefix.or_else(|| link_prefix(&d));
    assert!(
        on_remote_engine() || prefix.is_some(),
        "no sandbox network named in the daemon's log; the link check needs it"
    );
    wait_for(Duration::from_secs(10), || {
        leftovers(&home, &seen, prefix.as_deref()).is_empty()
    });
    let left = leftovers(&home, &seen, prefix.as_deref());
    let m = model.lock().unwrap();
    eprintln!(
        "chaos: seed {seed}, {ROUNDS} kills, {} sandboxes seen, ops {:?}, {} cut by a kill, \
         {} snapshots, {:?}",
        seen.len(),
        m.ops,
        m.unanswered,
        m.snapshots.len(),
        started.elapsed()
    );
    assert!(
        left.is_empty(),
        "seed {seed}: left on the host after everything was destroyed:\n  {}",
        left.join("\n  ")
    );
}

/// SIGKILLs session `id`'s PID 1 (`pid`, from [`sandbox_init_pid`]) from
/// the host, through a pidfd, after checking that the pid is still one of
/// the sandbox's processes.
fn kill_pid_1(id: &str, pid: i32) {
    // SAFETY: plain syscalls on integers; the fd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            fd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        assert!(
            sandbox_pids(id).contains(&pid),
            "pid {pid} is no longer a process of session {id}"
        );
        let rc = libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, 0, "SIGKILL to PID 1 ({pid}) of {id}: {err}");
    }
}

/// The value of one sample of `/metrics` (0 when absent).
fn metric(d: &Daemon, sample: &str) -> f64 {
    let text = d.get("/metrics").text;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn stored_state(home: &DataDir, id: &str) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        home.data.join("sandkasten.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening the daemon's store read-only");
    db.query_row("SELECT state FROM sessions WHERE id = ?1", [id], |r| {
        r.get::<_, String>(0)
    })
    .ok()
}

/// Sets its flag when dropped: the main thread's panic inside a
/// `thread::scope` then stops the workers instead of waiting for them
/// forever.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// True while one of session `id`'s processes runs exactly `argv`.
fn runs_in(id: &str, argv: &[&str]) -> bool {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    sandbox_pids(id)
        .iter()
        .any(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
}

#[test]
fn a_session_whose_pid_1_is_killed_is_lost_and_its_neighbours_do_not_notice() {
    let d = Daemon::start(None);
    // Two victims: one with a streamed exec running, one with a plain one.
    let victims: Vec<String> = (0..2).map(|_| d.new_session()).collect();
    let (streamed, plain) = (&victims[0], &victims[1]);
    let neighbours: Vec<String> = (0..2).map(|_| d.new_session()).collect();
    for (i, id) in neighbours.iter().enumerate() {
        d.sh(
            id,
            &format!("export WHO=n{i}; cd /tmp; f() {{ echo fn{i}; }}"),
        );
        d.write(id, "/workspace/keep.bin", &[i as u8, 0, 255]);
    }
    let pids: Vec<i32> = victims
        .iter()
        .map(|v| sandbox_init_pid(v).expect("no PID 1 of a victim's sandbox"))
        .collect();
    let lost = "sandkasten_sessions_ended_total{state=\"lost\"}";
    let lost_before = metric(&d, lost);
    let stop = AtomicBool::new(false);
    let neighbour_execs = std::thread::scope(|s| {
        let _stop = SetOnDrop(&stop);
        // The neighbours exec all along, before, during and after the
        // kill; each answer is its own shell's.
        let workers: Vec<_> = neighbours
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (d, stop) = (&d, &stop);
                s.spawn(move || {
                    let mut n = 0;
                    while n < 5 || !stop.load(Ordering::SeqCst) {
                        let out = d.sh(id, &format!("echo $WHO $(pwd) $(f) {n}"));
                        assert_eq!(out, format!("n{i} /tmp fn{i} {n}\n"), "neighbour {id}");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // An exec is running in each victim when its PID 1 dies.
        let mut st = d.open_stream(streamed, json!({"cmd": "echo started; sleep 60"}));
        let first = st.next_event().expect("the victim's exec sent nothing");
        assert_eq!(first.data["chunk"], "started\n", "{}", first.raw);
        let running = s.spawn(|| d.exec_with(plain, json!({"cmd": "sleep 61"})));
        assert!(
            wait_for(Duration::from_secs(10), || runs_in(plain, &["sleep", "61"])),
            "the plain exec never started in {plain}"
        );
        let killed_at = Instant::now();
        for (v, pid) in victims.iter().zip(&pids) {
            kill_pid_1(v, *pid);
        }
        // The stream ends at once with an error event, never a `done`.
        let rest = st.rest();
        let last = rest
            .last()
            .expect("the victim's stream ended without an event");
        assert_eq!(
            last.event, "error",
            "the victim's exec after its PID 1 died: {rest:?}"
        );
        // The plain one answers that the session is lost (it was a 500
        // INTERNAL_ERROR before the chaos test).
        running.join().unwrap().assert_error(
            410,
            "SESSION_LOST",
            "an exec running in a session whose PID 1 died",
        );
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the victims' execs took {:?} to end",
            killed_at.elapsed()
        );
        // Reported lost: gone from the API (docs/api.md, Recovery), their
        // rows `lost`, counted.
        assert!(
            wait_for(Duration::from_secs(10), || victims
                .iter()
                .all(|v| d.get_session(v).status == 404)),
            "a victim is still listed: {:?}",
            d.listed_ids()
        );
        stop.store(true, Ordering::SeqCst);
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    for v in &victims {
        d.exec_with(v, json!({"cmd": "true"})).assert_error(
            404,
            "SESSION_NOT_FOUND",
            "exec in a lost session",
        );
        assert_eq!(stored_state(&d.home, v).as_deref(), Some("lost"));
        assert_sandbox_gone(&d.home, v, "a session whose PID 1 was killed");
    }
    assert_eq!(metric(&d, lost), lost_before + 2.0, "{lost}");
    // The neighbours kept everything.
    assert!(neighbour_execs >= 10, "{neighbour_execs} neighbour execs");
    let listed: BTreeSet<String> = d.listed_ids().into_iter().collect();
    for (i, id) in neighbours.iter().enumerate() {
        assert!(listed.contains(id), "neighbour {id} not listed: {listed:?}");
        assert_eq!(
            d.sh(id, "echo $WHO $(pwd) $(f)"),
            format!("n{i} /tmp fn{i}\n")
        );
        assert_eq!(d.read(id, "/workspace/keep.bin"), [i as u8, 0, 255]);
        assert_eq!(stored_state(&d.home, id).as_deref(), Some("running"));
    }
}

/// Freezes (or thaws) session `id`'s sandbox from the host, behind the
/// daemon's back (native: its freezer cgroup; docker: `docker pause`).
fn freeze_behind_the_daemon(id: &str, frozen: bool) {
    if on_docker() {
        let verb = if frozen { "pause" } else { "unpause" };
        let (ok, out) = docker_cli(&[verb, &container_name(id)]);
        assert!(ok, "docker {verb} of {id}: {out}");
        return;
    }
    let v2 = std::path::Path::new("/sys/fs/cgroup/sandkasten")
        .join(id)
        .join("cgroup.freeze");
    let v1 = std::path::Path::new("/sys/fs/cgroup/freezer/sandkasten")
        .join(id)
        .join("freezer.state");
    let done = match (v2.exists(), frozen) {
        (true, true) => std::fs::write(&v2, "1"),
        (true, false) => std::fs::write(&v2, "0"),
        (false, true) => std::fs::write(&v1, "FROZEN"),
        (false, false) => std::fs::write(&v1, "THAWED"),
    };
    done.unwrap_or_else(|e| panic!("freezing {id} through {v2:?} or {v1:?}: {e}"));
}

/// Found by the chaos test (docker, seed 4588511285446682872): a pause
/// freezes the sandbox, then stores `paused`; a SIGKILL in between left a
/// frozen sandbox under a `running` row, whose agent could not answer the
/// restart's ping, so the session was destroyed as lost. Recovery now
/// thaws a running row's sandbox before it reattaches.
#[test]
fn a_sandbox_frozen_by_a_pause_the_kill_cut_is_reattached_not_lost() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "export KEPT=yes; cd /tmp");
    let home = d.home.clone();
    freeze_behind_the_daemon(&id, true);
    d.kill_9();
    let d = Daemon::start_in(&home, None);
    let listed = d.get_session(&id);
    assert_eq!(listed.status, 200, "the session was lost: {}", listed.text);
    assert_eq!(listed.json["status"], "running", "{}", listed.text);
    assert_eq!(d.sh(&id, "echo $KEPT $(pwd)"), "yes /tmp\n");
}

/// Found by the chaos test (docker-remote, seed 4189396790986402462): a
/// resume (an exec resumes a paused session) thaws the sandbox, then
/// stores `running`; a SIGKILL in between left a running sandbox under a
/// `paused` row, the restart's thaw failed ("is not paused") and the
/// session was destroyed as lost. The agent's answer now decides.
#[test]
fn a_sandbox_thawed_by_a_resume_the_kill_cut_is_reattached_not_lost() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "export KEPT=yes; cd /tmp");
    d.post(&format!("/v1/sessions/{id}/pause"), &json!({}))
        .expect(200, "pause");
    freeze_behind_the_daemon(&id, false);
    let home = d.home.clone();
    d.kill_9();
    let d = Daemon::start_in(&home, None);
    let listed = d.get_session(&id);
    assert_eq!(listed.status, 200, "the session was lost: {}", listed.text);
    assert_eq!(d.sh(&id, "echo $KEPT $(pwd)"), "yes /tmp\n");
}

mod native_only {
    use super::*;

    /// Found by the chaos test: a snapshot that came between a create's
    /// workspace record and its image answered 400 UNSUPPORTED ("a
    /// workspace without a quota"). It now waits for the image.
    #[test]
    fn a_snapshot_during_the_first_create_of_its_workspace_waits_for_the_image() {
        require_native("workspace snapshots (btrfs images)");
        let d = Daemon::start(None);
        for _ in 0..3 {
            let ws = ws_id("first-use");
            let done = AtomicBool::new(false);
            let answers = std::thread::scope(|s| {
                let creator = s.spawn(|| {
                    let v = d.create_session(json!({ "workspace_id": ws }));
                    done.store(true, Ordering::SeqCst);
                    v
                });
                let mut answers = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let r = d.post(&format!("/v1/workspaces/{ws}/snapshots"), &json!({}));
                    answers.push((r.status, r.error_code().to_string()));
                }
                creator.join().unwrap();
                answers
            });
            for (status, code) in &answers {
                assert!(
                    *status == 201 || (*status == 404 && code == "WORKSPACE_NOT_FOUND"),
                    "a snapshot during the workspace's first create: {status} {code} \
                     (all answers: {answers:?})"
                );
            }
            assert!(
                answers.iter().any(|(s, _)| *s == 201),
                "no snapshot was taken while the create ran: {answers:?}"
            );
        }
    }

    /// The launcher spawner (`sandkasten-agent spawner`, a child of the
    /// daemon) killed from the host: the next create starts a new one and
    /// works, and sandboxes still show `sandkasten-agent init` as PID 1.
    #[test]
    fn a_killed_launcher_spawner_is_replaced_at_the_next_create() {
        require_native("the launcher spawner");
        let d = Daemon::start(None);
        let first = d.create_session(json!({}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let spawners = || -> Vec<i32> {
            let mut out = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<i32>().ok());
                if cmd == b"sandkasten-agent\0spawner\0" && ppid == Some(d.pid()) {
                    out.push(pid);
                }
            }
            out
        };
        let before = spawners();
        assert_eq!(
            before.len(),
            1,
            "one spawner, a child of the daemon: {before:?}"
        );
        // SAFETY: kill of the spawner this test's daemon started.
        assert_eq!(unsafe { libc::kill(before[0], libc::SIGKILL) }, 0);
        let second = d.create_session(json!({}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(d.sh(&second, "echo ok"), "ok\n");
        assert_eq!(d.sh(&first, "echo ok"), "ok\n");
        assert_eq!(
            d.sh(&second, "tr '\\0' ' ' < /proc/1/cmdline"),
            "sandkasten-agent init    "
        );
        let after = spawners();
        assert!(
            after.len() == 1 && after != before,
            "a new spawner replaced the killed one: {before:?} then {after:?}"
        );
    }
}

/// A docker engine of the test's own (its data root, exec root, pid file
/// and socket below the data dir, no bridge, no iptables rules), which
/// the test can SIGKILL and start again without touching the engine the
/// rest of the suite shares. Runs once, in the native pass (the docker
/// passes leave out `own_engine::`).
mod own_engine {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    struct OwnEngine {
        dir: PathBuf,
        child: Option<Child>,
    }

    impl OwnEngine {
        fn start(home: &DataDir, live_restore: bool) -> OwnEngine {
            let dir = home.root.join("engine");
            std::fs::create_dir_all(&dir).unwrap();
            let mut e = OwnEngine { dir, child: None };
            e.spawn(live_restore);
            e
        }

        fn sock(&self) -> String {
            format!("unix://{}", self.dir.join("docker.sock").display())
        }

        fn spawn(&mut self, live_restore: bool) {
            let d = &self.dir;
            std::fs::write(
                d.join("daemon.json"),
                format!("{{\"live-restore\": {live_restore}}}"),
            )
            .unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(d.join("dockerd.log"))
                .unwrap();
            let child = Command::new("dockerd")
                .arg("--config-file")
                .arg(d.join("daemon.json"))
                .arg("--data-root")
                .arg(d.join("root"))
                .arg("--exec-root")
                .arg(d.join("exec"))
                .arg("--pidfile")
                .arg(d.join("dockerd.pid"))
                .args(["-H", &self.sock()])
                .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("the engine test starts dockerd (apt-get install docker.io)");
            self.child = Some(child);
            // No event tells when an engine answers: ask it.
            let up = wait_for(Duration::from_secs(30), || self.cli(&["version"]).0);
            assert!(up, "our dockerd did not come up: {}", self.log());
        }

        fn log(&self) -> String {
            let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        }

        fn cli(&self, args: &[&str]) -> (bool, String) {
            let out = Command::new("docker")
                .args(["-H", &self.sock()])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("the docker CLI (apt-get install docker.io)");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )
        }

        /// SIGKILL (its containers' shims live on), then a fresh start.
        fn kill_and_restart(&mut self, live_restore: bool) {
            let mut c = self.child.take().expect("our dockerd runs");
            c.kill().unwrap();
            c.wait().unwrap();
            // Its containerd dies with it but may stay a zombie for a
            // while (its new parent reaps it), and a new dockerd takes a
            // containerd whose pid file names a live pid for running and
            // waits for it: the pid files go once it is dead.
            let containerd = self.dir.join("exec/containerd/containerd.pid");
            if let Some(pid) = std::fs::read_to_string(&containerd)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let dead = wait_for(Duration::from_secs(10), || {
                    std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map(|st| {
                            st.rsplit(')')
                                .next()
                                .unwrap_or("")
                                .trim_start()
                                .starts_with('Z')
                        })
                        .unwrap_or(true)
                });
                assert!(dead, "our engine's containerd ({pid}) outlives its dockerd");
            }
            let _ = std::fs::remove_file(containerd);
            let _ = std::fs::remove_file(self.dir.join("dockerd.pid"));
            self.spawn(live_restore);
        }

        /// Kills what an engine that no longer answers left: its shims
        /// (their command line names our engine's socket) and the
        /// processes of their containers (cgroups named after the
        /// container ids the shims serve).
        fn kill_strays(&self) {
            let dir = self.dir.display().to_string();
            let mut shims = Vec::new();
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> = cmd
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if args
                    .first()
                    .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                    && args.iter().any(|a| a.contains(&dir))
                {
                    let id = args.iter().skip_while(|a| *a != "-id").nth(1).cloned();
                    shims.push((pid, id));
                }
            }
            for (pid, id) in shims {
                if let Some(id) = id.filter(|i| i.len() == 64) {
                    for p in pids_whose_cgroups(|text| text.contains(&id)) {
                        // SAFETY: a process of one of our engine's containers.
                        unsafe {
                            libc::kill(p, libc::SIGKILL);
                        }
                    }
                }
                // SAFETY: a shim of our engine (its socket is ours).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }

        /// Labelled objects of `data` still in this engine.
        fn objects_of(&self, data: &std::path::Path) -> Vec<String> {
            let label = format!("label=sandkasten.data_dir={}", data.display());
            let mut out = Vec::new();
            for (what, args) in [
                ("container", vec!["ps", "-aq", "--filter", &label]),
                ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
            ] {
                let (ok, text) = self.cli(&args);
                assert!(ok, "docker {args:?} on our engine failed");
                out.extend(text.lines().map(|l| format!("{what} {l}")));
            }
            out
        }

        fn stop(&mut self) {
            let Some(mut c) = self.child.take() else {
                return;
            };
            // With live restore its containers would outlive it.
            let (_, ids) = self.cli(&["ps", "-aq", "--no-trunc"]);
            for id in ids.lines() {
                self.cli(&["rm", "-f", "-v", id]);
            }
            self.kill_strays();
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
            // dockerd leaves its data root bound onto itself.
            let prefix = format!("{}/", self.dir.display());
            let mut mounts: Vec<String> = mount_points()
                .into_iter()
                .filter(|m| m.starts_with(&prefix))
                .collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in mounts {
                let c = std::ffi::CString::new(m.clone()).unwrap();
                // SAFETY: umount2 of a path below our own engine's dir.
                if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                    eprintln!("unmounting {m}: {}", std::io::Error::last_os_error());
                }
            }
        }
    }

    impl Drop for OwnEngine {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn stream_text(events: &[SseEvent]) -> String {
        events
            .iter()
            .filter(|e| e.event == "chunk")
            .filter_map(|e| e.data["chunk"].as_str())
            .collect()
    }

    #[test]
    fn the_engine_killed_and_restarted_mid_exec_loses_no_answer() {
        let home = DataDir::new();
        let mut engine = OwnEngine::start(&home, true);
        let image = docker_image();
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = Command::new("docker")
            .args(["-H", &engine.sock(), "load"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(load.status.success(), "loading {image} into our engine");
        let d = Daemon::start_in(
            &home,
            Some(&format!(
                "runtime: docker\ndefault_image: \"{image}\"\ndocker:\n  host: {}\n",
                engine.sock()
            )),
        );
        let ids: Vec<String> = (0..2).map(|_| d.new_session()).collect();
        for (i, id) in ids.iter().enumerate() {
            d.sh(id, &format!("export WHO=s{i}; cd /tmp"));
        }

        // With live restore: the exec in flight finishes, the sessions
        // keep their shells, creates work again.
        let mut st = d.open_stream(&ids[0], json!({"cmd": "echo started; sleep 2; echo end"}));
        assert_eq!(st.next_event().unwrap().data["chunk"], "started\n");
        engine.kill_and_restart(true);
        let rest = st.rest();
        assert_eq!(stream_text(&rest), "end\n", "{rest:?}");
        assert_eq!(rest.last().unwrap().event, "done", "{rest:?}");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(d.sh(id, "echo $WHO $(pwd)"), format!("s{i} /tmp\n"));
        }
        let fresh = d.new_session();
        assert_eq!(d.sh(&fresh, "echo fresh"), "fresh\n");

        // Without: the engine stops the containers it finds (after its
        // stop timeout); the exec in flight still answers, the sessions
        // are reported lost and nothing of them stays in the engine.
        let mut st = d.open_stream(&ids[1], json!({"cmd": "echo started; sleep 2; echo end"}));
        assert_eq!(st.next_event().unwrap().data["chunk"], "started\n");
        engine.kill_and_restart(false);
        let rest = st.rest();
        let last = rest.last().expect("the stream ended without an event");
        assert!(
            (last.event == "done" && stream_text(&rest) == "end\n") || last.event == "error",
            "the exec in flight: {rest:?}"
        );
        let all: Vec<String> = ids.iter().cloned().chain([fresh]).collect();
        let gone = wait_for(Duration::from_secs(60), || {
            all.iter().all(|id| d.get_session(id).status == 404)
        });
        assert!(gone, "sessions not reported lost: {:?}", d.list_sessions());
        for id in &all {
            assert_eq!(stored_state(&home, id).as_deref(), Some("lost"), "{id}");
        }
        let left = wait_for(Duration::from_secs(10), || {
            engine.objects_of(&home.data).is_empty()
        });
        assert!(
            left,
            "left in the engine: {:?}",
            engine.objects_of(&home.data)
        );
        // And the daemon serves on the restarted engine.
        let again = d.new_session();
        assert_eq!(d.sh(&again, "echo again"), "again\n");
        d.delete(&again);
        assert!(engine.objects_of(&home.data).is_empty());
        let (status, _) = d.terminate();
        assert!(status.success());
        engine.stop();
    }
}
