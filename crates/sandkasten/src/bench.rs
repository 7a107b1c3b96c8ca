//! `sandkasten bench`: latency of the daemon's hot paths over HTTP on
//! loopback, as p50/p95, with `docker run`/`docker exec` measured in the
//! same run when a Docker engine answers (for the ratio). Prints a table and
//! writes JSON.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod scale;

/// Options of one benchmark run.
pub struct BenchOptions {
    pub iterations: usize,
    pub json: PathBuf,
    /// Benchmark an already running daemon instead of starting one.
    pub url: Option<String>,
    pub key: Option<String>,
    /// The pause before each create of the time-to-first-command series.
    pub gap: Duration,
    /// Scale mode: the headline with this many idle sessions alive.
    pub sessions: Option<usize>,
    /// Scale mode: this many concurrent exec clients.
    pub clients: Option<usize>,
}

/// Latency samples of one operation, in milliseconds.
struct Series {
    name: &'static str,
    samples: Vec<f64>,
}

impl Series {
    fn percentile(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        if s.is_empty() {
            return f64::NAN;
        }
        let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
        s[idx.min(s.len() - 1)]
    }
}

/// The idle gap before the execs that compare a session's first exec with
/// any other.
const IDLE_GAP: Duration = Duration::from_millis(50);

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let start = Instant::now();
    let v = f()?;
    Ok((start.elapsed().as_secs_f64() * 1000.0, v))
}

/// A daemon started for the benchmark; stopped (SIGTERM) on drop.
struct OwnDaemon {
    child: Child,
    data_dir: tempfile::TempDir,
    /// Its URL and key, to destroy what a failed run left.
    url: String,
    key: String,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        // Sessions outlive their daemon by design: a run that failed half
        // way destroys what it left before stopping the daemon.
        let api = Api {
            http: reqwest::blocking::Client::new(),
            url: self.url.clone(),
            key: self.key.clone(),
        };
        let left = (!self.url.is_empty())
            .then(|| api.call(reqwest::Method::GET, "/v1/sessions", None).ok())
            .flatten();
        for s in left
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = s["id"].as_str() {
                let _ = api.destroy(id);
            }
        }
        // SAFETY: signalling the daemon we started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Sessions were destroyed through the API; nothing may be mounted
        // below the data dir, and remove_tree refuses if something is.
        let _ = sandkasten_native::remove_tree(self.data_dir.path());
    }
}

/// Starts a daemon on a fresh data dir; `config` is YAML (None: embedded
/// defaults).
fn start_daemon(key: &str, config: Option<&str>) -> Result<(OwnDaemon, String)> {
    let data_dir = tempfile::Builder::new()
        .prefix("sandkasten-bench-")
        .tempdir()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve");
    if let Some(yaml) = config {
        let path = data_dir.path().join("bench.yaml");
        std::fs::write(&path, yaml)?;
        cmd.arg("--config").arg(path);
    }
    let mut child = cmd
        .env("SANDKASTEN_LISTEN", "127.0.0.1:0")
        .env("SANDKASTEN_DATA_DIR", data_dir.path())
        .env("SANDKASTEN_API_KEY", key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the daemon")?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_string);
    let Some(url) = url else {
        // Dropped here: stopped, nothing to clean up through its API.
        let _daemon = OwnDaemon {
            child,
            data_dir,
            url: String::new(),
            key: key.to_string(),
        };
        bail!("the daemon did not start (printed {line:?})");
    };
    let daemon = OwnDaemon {
        child,
        data_dir,
        url: url.clone(),
        key: key.to_string(),
    };
    Ok((daemon, url))
}

struct Api {
    http: reqwest::blocking::Client,
    url: String,
    key: String,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send()?;
        let status = resp.status();
        let v: Value = resp.json().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }
    fn create(&self) -> Result<String> {
        self.create_with(json!({}))
    }
    fn create_with(&self, body: Value) -> Result<String> {
        let v = self.call(reqwest::Method::POST, "/v1/sessions", Some(body))?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }
    fn exec(&self, id: &str, cmd: &str) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({ "cmd": cmd })),
        )
    }
    fn destroy(&self, id: &str) -> Result<()> {
        self.call(reqwest::Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .map(|_| ())
    }
    /// The daemon's cold-create steps so far (`GET /metrics`): name,
    /// total seconds, count.
    fn cold_phases(&self) -> Result<Vec<(String, f64, u64)>> {
        self.phases(COLD_PHASES)
    }
    /// The steps of the summary `metric` so far (`GET /metrics`).
    fn phases(&self, metric: &str) -> Result<Vec<(String, f64, u64)>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.key)
            .send()?
            .error_for_status()?
            .text()?;
        Ok(parse_phases(&text, metric))
    }
}

const COLD_PHASES: &str = "sandkasten_cold_create_phase_seconds";
const POOL_PHASES: &str = "sandkasten_pool_create_phase_seconds";

/// `<metric>_{sum,count}{phase="…"}` lines.
fn parse_phases(text: &str, metric: &str) -> Vec<(String, f64, u64)> {
    let mut out: Vec<(String, f64, u64)> = Vec::new();
    let prefix = format!("{metric}_");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once("{phase=\"") else {
            continue;
        };
        let Some((name, value)) = rest.rsplit_once("\"} ") else {
            continue;
        };
        let name = name.replace("\\\"", "\"").replace("\\\\", "\\");
        let i = match out.iter().position(|(n, _, _)| *n == name) {
            Some(i) => i,
            None => {
                out.push((name, 0.0, 0));
                out.len() - 1
            }
        };
        match kind {
            "sum" => out[i].1 = value.parse().unwrap_or(0.0),
            "count" => out[i].2 = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

/// Mean milliseconds per step between two readings of the daemon's
/// cold-create steps.
fn phase_means(before: &[(String, f64, u64)], after: &[(String, f64, u64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .filter_map(|(name, sum, count)| {
            let (s0, c0) = before
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0.0, 0), |(_, s, c)| (*s, *c));
            (count > &c0).then(|| (name.clone(), (sum - s0) * 1000.0 / (count - c0) as f64))
        })
        .collect()
}

const PROC_FIRST_BYTE: &str = "process start to first byte";
const E2B_START: &str = "e2b Start of bash -l -c true (Connect)";
const E2B_EXEC: &str = "exec (true), alternating with e2b";
const MCP_RUN: &str = "mcp run_command (true)";
const MCP_EXEC: &str = "exec (true), alternating with mcp";

/// `run_command` of `true` over MCP at `/mcp`: stateless requests of the
/// current revision (2026-07-28), one POST each on the kept connection,
/// as an MCP client sends them; alternating with HTTP execs of `true`, so
/// that the ratio compares the two under the same load.
fn mcp_series(api: &Api, id: &str, n: usize) -> Result<Vec<Series>> {
    let mut series = Series {
        name: MCP_RUN,
        samples: vec![],
    };
    let mut exec = Series {
        name: MCP_EXEC,
        samples: vec![],
    };
    for i in 0..n {
        let (ms, _) = time(|| api.exec(id, "true"))?;
        exec.samples.push(ms);
        let body = json!({
            "jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {
                "name": "run_command",
                "arguments": {"session_id": id, "cmd": "true"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        });
        let (ms, v) = time(|| {
            let resp = api
                .http
                .post(format!("{}/mcp", api.url))
                .bearer_auth(&api.key)
                .header("Accept", "application/json, text/event-stream")
                .header("MCP-Protocol-Version", "2026-07-28")
                .header("Mcp-Method", "tools/call")
                .header("Mcp-Name", "run_command")
                .json(&body)
                .send()?;
            let status = resp.status();
            let text = resp.text()?;
            if !status.is_success() {
                bail!("/mcp: {status} {text}");
            }
            Ok(serde_json::from_str::<Value>(&text)?)
        })?;
        if v["result"]["isError"] != json!(false) {
            bail!("/mcp run_command: {v}");
        }
        series.samples.push(ms);
    }
    Ok(vec![series, exec])
}

/// Background processes: a start answered with its pid (JSON), and a
/// streamed start timed to its first output event (`echo`), each read to
/// its end so the connection is reused.
fn process_series(api: &Api, id: &str, n: usize) -> Result<Vec<Series>> {
    use std::io::BufRead;
    let mut start = Series {
        name: "process start (pid)",
        samples: vec![],
    };
    let mut first = Series {
        name: PROC_FIRST_BYTE,
        samples: vec![],
    };
    let path = format!("/v1/sessions/{id}/processes");
    for _ in 0..n {
        let (ms, _) = time(|| {
            api.call(
                reqwest::Method::POST,
                &path,
                Some(json!({"argv": ["true"]})),
            )
        })?;
        start.samples.push(ms);
        let t = std::time::Instant::now();
        let resp = api
            .http
            .post(format!("{}{path}/stream", api.url))
            .bearer_auth(&api.key)
            .json(&json!({"argv": ["echo", "x"]}))
            .send()?;
        if !resp.status().is_success() {
            bail!("{path}/stream: {}", resp.status());
        }
        let mut lines = std::io::BufReader::new(resp);
        let mut line = String::new();
        let mut got = None;
        loop {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                break;
            }
            if got.is_none() && line.trim_end() == "event: stdout" {
                got = Some(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        first
            .samples
            .push(got.ok_or_else(|| anyhow::anyhow!("a process stream without output"))?);
    }
    // The processes ended; they stay listed (64 at most), harmless.
    Ok(vec![start, first])
}

/// What the E2B SDKs' `commands.run("true")` asks of envd: a
/// `process.Process/Start` of `/bin/bash -l -c true` (server streaming,
/// the Connect JSON codec, one envelope each way), read to its end event;
/// alternating with HTTP execs of `true`, so that the ratio compares the
/// two under the same load. The SDK's own work on top is not in it
/// (`tests/e2b/timing.py` measures through the SDK).
fn e2b_series(api: &Api, id: &str, n: usize) -> Result<Vec<Series>> {
    let mut start = Series {
        name: E2B_START,
        samples: vec![],
    };
    let mut exec = Series {
        name: E2B_EXEC,
        samples: vec![],
    };
    let msg = serde_json::to_vec(&json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"], "envs": {}}
    }))?;
    let mut body = vec![0u8];
    body.extend((msg.len() as u32).to_be_bytes());
    body.extend(msg);
    let user = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:")
    );
    for _ in 0..n {
        let (ms, _) = time(|| api.exec(id, "true"))?;
        exec.samples.push(ms);
        let (ms, text) = time(|| {
            let resp = api
                .http
                .post(format!("{}/process.Process/Start", api.url))
                .header("Content-Type", "application/connect+json")
                .header("Connect-Protocol-Version", "1")
                .header("E2b-Sandbox-Id", id)
                .header("X-API-Key", &api.key)
                .header("Authorization", &user)
                .body(body.clone())
                .send()?;
            let status = resp.status();
            let bytes = resp.bytes()?;
            if !status.is_success() {
                bail!("process.Process/Start: {status}");
            }
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })?;
        if !text.contains("\"exited\":true") {
            bail!("process.Process/Start ended without an exit: {text}");
        }
        start.samples.push(ms);
    }
    Ok(vec![start, exec])
}

const FORK_CHILD: &str = "fork, per child (1 GB /workspace)";

/// Pause, resume, hibernate and wake of one session, and forks of a
/// session with 1 GB in its ephemeral `/workspace` (one child each: the
/// time per child).
fn lifecycle_series(api: &Api, n: usize) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = ["pause", "resume", "hibernate", "wake + exec", FORK_CHILD]
        .into_iter()
        .map(|name| Series {
            name,
            samples: vec![],
        })
        .collect();
    let id = api.create()?;
    api.exec(&id, "sleep 600 >/dev/null 2>&1 &")?;
    let post = |what: &str| {
        api.call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/{what}"),
            Some(json!({})),
        )
    };
    for _ in 0..n {
        series[0].samples.push(time(|| post("pause"))?.0);
        series[1].samples.push(time(|| post("resume"))?.0);
    }
    for _ in 0..n {
        series[2].samples.push(time(|| post("hibernate"))?.0);
        series[3].samples.push(time(|| api.exec(&id, "true"))?.0);
    }
    let big = api.exec(
        &id,
        "head -c 1073741824 /dev/zero > /workspace/big && sync && stat -c %s /workspace/big",
    )?;
    if big["output"].as_str().map(str::trim) != Some("1073741824") {
        api.destroy(&id)?;
        bail!("could not write 1 GB into /workspace: {big}");
    }
    for _ in 0..n {
        let (ms, v) = time(|| {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/sessions/{id}/fork"),
                Some(json!({"count": 1})),
            )
        })?;
        series[4].samples.push(ms);
        for c in v["sessions"].as_array().into_iter().flatten() {
            if let Some(cid) = c["id"].as_str() {
                api.destroy(cid)?;
            }
        }
    }
    api.destroy(&id)?;
    Ok(series)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// Proportional set size of every process in a session's memory cgroup.
fn session_pss_kb(id: &str) -> Option<u64> {
    let cg = sandkasten_native::Cgroups::detect().ok()?;
    let root = match &cg.memory {
        sandkasten_native::Hierarchy::V1(p) | sandkasten_native::Hierarchy::V2(p) => p.clone(),
    };
    let procs =
        std::fs::read_to_string(root.join("sandkasten").join(id).join("cgroup.procs")).ok()?;
    let mut total = 0;
    for pid in procs.lines() {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

fn docker_ok() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// An image with `true` and `sleep`: $SANDKASTEN_BENCH_DOCKER_IMAGE, or one
/// imported once from the host's static busybox.
fn docker_image() -> Result<String> {
    if let Ok(img) = std::env::var("SANDKASTEN_BENCH_DOCKER_IMAGE") {
        return Ok(img);
    }
    let name = "sandkasten-bench:busybox";
    let have = Command::new("docker")
        .args(["image", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if have.success() {
        return Ok(name.into());
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("no image: set SANDKASTEN_BENCH_DOCKER_IMAGE or install busybox-static");
    }
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("bin"))?;
    std::fs::copy(busybox, dir.path().join("bin/busybox"))?;
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(applet))?;
    }
    let tar = dir.path().join("img.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir.path())
        .arg("-cf")
        .arg(&tar)
        .arg("bin")
        .status()?;
    if !ok.success() {
        bail!("tar failed");
    }
    let ok = Command::new("docker")
        .arg("import")
        .arg(&tar)
        .arg(name)
        .stdout(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("docker import failed");
    }
    Ok(name.into())
}

fn run_cmd(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker_series(n: usize) -> Result<Vec<Series>> {
    let image = docker_image()?;
    let mut run = Series {
        name: "docker run (true)",
        samples: vec![],
    };
    for _ in 0..n.min(20) {
        let (ms, _) =
            time(|| run_cmd(&["docker", "run", "--rm", "--network", "none", &image, "true"]))?;
        run.samples.push(ms);
    }
    let ctr = run_cmd(&[
        "docker",
        "run",
        "-d",
        "--rm",
        "--network",
        "none",
        &image,
        "sleep",
        "3600",
    ])?;
    let mut exec = Series {
        name: "docker exec (true)",
        samples: vec![],
    };
    let result = (|| -> Result<()> {
        for _ in 0..n {
            let (ms, _) = time(|| run_cmd(&["docker", "exec", &ctr, "true"]))?;
            exec.samples.push(ms);
        }
        Ok(())
    })();
    let _ = run_cmd(&["docker", "rm", "-f", &ctr]);
    result?;
    Ok(vec![run, exec])
}

pub fn run(opts: BenchOptions) -> Result<()> {
    let n = opts.iterations.max(5);
    let generated_key = format!("bench-{}", uuid_like());
    let (own, url, key) = match &opts.url {
        Some(u) => (
            None,
            u.clone(),
            opts.key.clone().context("--url needs --key")?,
        ),
        None => {
            // Room for every session of the largest series at once (and
            // the scale modes' own).
            let room = 2 * n + 16 + opts.sessions.unwrap_or(0) + opts.clients.unwrap_or(0);
            let (d, u) = start_daemon(
                &generated_key,
                Some(&format!("max_sessions: {room}\n{NETWORK_CONFIG}")),
            )?;
            (Some(d), u, generated_key.clone())
        }
    };
    let api = Api {
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        url,
        key,
    };
    let idle_rss_kb = own.as_ref().and_then(|d| rss_kb(d.child.id()));

    // Warm-up: the first create builds the base image.
    let warm = api.create()?;
    api.exec(&warm, "true")?;
    api.destroy(&warm)?;
    if opts.sessions.is_some() || opts.clients.is_some() {
        let mut report = json!({"iterations": n, "gap_ms": opts.gap.as_millis() as u64});
        if let Some(s) = opts.sessions {
            report["sessions"] = scale::sessions(&api, s, n, opts.gap)?;
        }
        if let Some(c) = opts.clients {
            report["clients"] = scale::clients(&api, c.max(1))?;
        }
        std::fs::write(&opts.json, serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", opts.json.display());
        return Ok(());
    }
    // The headline first, on a daemon with no other sessions, with the
    // daemon's own account of where a cold create's time goes.
    let phases_before = api.cold_phases().unwrap_or_default();
    let first_command = first_command_series(&api, n, opts.gap)?;
    let phases = phase_means(&phases_before, &api.cold_phases().unwrap_or_default());

    let mut create = Series {
        name: "cold create",
        samples: vec![],
    };
    // Creates with a network (a link, its addresses and routes, the
    // policy's rules), alternating with those without, so that both see
    // the same machine.
    let mut create_net = Series {
        name: "cold create with network",
        samples: vec![],
    };
    let mut ids = Vec::new();
    let mut net_ids = Vec::new();
    let mut network_ok = true;
    for _ in 0..n {
        let (ms, id) = time(|| api.create())?;
        create.samples.push(ms);
        ids.push(id);
        if network_ok {
            match time(|| api.create_with(NETWORK_POLICY.clone())) {
                Ok((ms, id)) => {
                    create_net.samples.push(ms);
                    net_ids.push(id);
                }
                Err(e) => {
                    println!("network: not measured ({e:#})");
                    network_ok = false;
                }
            }
        }
    }
    for id in &net_ids {
        api.destroy(id)?;
    }
    // Creates that mount an existing workspace (the ratio against cold
    // creates is the cost of the mount).
    api.call(
        reqwest::Method::POST,
        "/v1/workspaces",
        Some(json!({ "id": "bench-ws" })),
    )?;
    let mut create_ws = Series {
        name: "create with workspace",
        samples: vec![],
    };
    for _ in 0..n {
        let (ms, v) = time(|| {
            api.call(
                reqwest::Method::POST,
                "/v1/sessions",
                Some(json!({ "workspace_id": "bench-ws" })),
            )
        })?;
        create_ws.samples.push(ms);
        api.destroy(v["id"].as_str().unwrap_or_default())?;
    }
    let first = ids[0].clone();
    let mut exec = Series {
        name: "exec round trip (true)",
        samples: vec![],
    };
    for _ in 0..(n * 5) {
        let (ms, _) = time(|| api.exec(&first, "true"))?;
        exec.samples.push(ms);
    }
    // Back-to-back execs find every thread awake; an exec after the host
    // was idle for a moment pays the wake-ups (about 1 ms in a VM). The
    // first exec of a new session always comes after such a gap, so this
    // is its fair reference.
    let mut exec_idle = Series {
        name: "exec after 50 ms idle",
        samples: vec![],
    };
    for _ in 0..n {
        std::thread::sleep(IDLE_GAP);
        let (ms, _) = time(|| api.exec(&first, "true"))?;
        exec_idle.samples.push(ms);
    }
    let ports = ports_series(&api, &first, n * 5);
    let procs = process_series(&api, &first, n * 5)?;
    let mcp = mcp_series(&api, &first, n * 5)?;
    let e2b = e2b_series(&api, &first, n * 5)?;
    let lifecycle = lifecycle_series(&api, n);
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    let mut write = Series {
        name: "write 1 MiB",
        samples: vec![],
    };
    let mut read = Series {
        name: "read 1 MiB",
        samples: vec![],
    };
    for i in 0..n {
        let path = format!("bench/{i}.bin");
        let (ms, _) = time(|| {
            api.call(
                reqwest::Method::POST,
                &format!("/v1/sessions/{first}/fs/write"),
                Some(json!({ "path": path, "content_base64": b64 })),
            )
        })?;
        write.samples.push(ms);
        let (ms, v) = time(|| {
            api.call(
                reqwest::Method::GET,
                &format!("/v1/sessions/{first}/fs/read?path={path}"),
                None,
            )
        })?;
        read.samples.push(ms);
        if v["content_base64"].as_str() != Some(b64.as_str()) {
            bail!("read back differs from what was written");
        }
    }
    // Idle sessions' memory: settle briefly, then measure a few.
    let sample: Vec<&String> = ids.iter().take(5).collect();
    let pss: Vec<u64> = sample.iter().filter_map(|id| session_pss_kb(id)).collect();
    let per_session_kb = (!pss.is_empty()).then(|| pss.iter().sum::<u64>() / pss.len() as u64);
    let mut destroy = Series {
        name: "destroy",
        samples: vec![],
    };
    for id in &ids {
        let (ms, _) = time(|| api.destroy(id))?;
        destroy.samples.push(ms);
    }
    let _ = api.call(reqwest::Method::DELETE, "/v1/workspaces/bench-ws", None);
    let mut series = first_command;
    series.extend([
        create, create_net, create_ws, exec, exec_idle, write, read, destroy,
    ]);
    series.extend(procs);
    series.extend(mcp);
    series.extend(e2b);
    match lifecycle {
        Ok(l) => series.extend(l),
        Err(e) => println!("pause, hibernate and fork: not measured ({e:#})"),
    }
    series.retain(|s| !s.samples.is_empty());
    let ports_measured = match ports {
        Ok(s) => {
            series.extend(s);
            Value::String("measured".into())
        }
        Err(e) => {
            println!("ports: not measured: {e:#}");
            Value::String(format!("not measured: {e:#}"))
        }
    };
    // The pool: a daemon of its own with a pool of the default image (or
    // the --url daemon's pool, if it has one).
    let mut pool_phases = Vec::new();
    let pooled = match &opts.url {
        Some(_) => pooled_series(&api, n, opts.gap, &mut pool_phases),
        None => {
            let (d, u) = start_daemon(
                &generated_key,
                Some(&format!(
                    "max_sessions: {}\npool:\n  enabled: true\n  images:\n    \"{}\": 3\n{NETWORK_CONFIG}",
                    n + 16,
                    pool_image()
                )),
            )?;
            let pool_api = Api {
                http: api.http.clone(),
                url: u,
                key: generated_key.clone(),
            };
            let r = pooled_series(&pool_api, n, opts.gap, &mut pool_phases);
            drop(d);
            // Pooled creates with a network, on a daemon whose default is
            // full (its pooled sandboxes wait with a link that allows
            // nothing; the claim sets the request's rules).
            let (d, u) = start_daemon(
                &generated_key,
                Some(&format!(
                    "max_sessions: {}\npool:\n  enabled: true\n  images:\n    \"{}\": 3\n\
                     {NETWORK_CONFIG}defaults:\n  network_mode: full\n",
                    n + 16,
                    pool_image()
                )),
            )?;
            let net_api = Api {
                http: api.http.clone(),
                url: u,
                key: generated_key.clone(),
            };
            let net = pooled_network_series(&net_api, n);
            drop(d);
            match (r, net) {
                (Ok(Some(mut s)), Ok(Some(extra))) => {
                    s.push(extra);
                    Ok(Some(s))
                }
                (r, Err(e)) => {
                    println!("pooled creates with network: not measured ({e:#})");
                    r
                }
                (r, _) => r,
            }
        }
    };
    match pooled {
        Ok(Some(s)) => series.extend(s),
        Ok(None) => println!("pool: not measured (the daemon has no pool for its default image)"),
        Err(e) => bail!("pool benchmark: {e:#}"),
    }
    let docker = if docker_ok() {
        match docker_series(n) {
            Ok(s) => {
                series.extend(s);
                Value::String("measured".into())
            }
            Err(e) => Value::String(format!("not measured: {e:#}")),
        }
    } else {
        Value::String("not measured: no Docker engine answers".into())
    };

    let p50 = |name: &str| {
        series
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.percentile(50.0))
    };
    let ratio = |a: &str, b: &str| match (p50(a), p50(b)) {
        (Some(x), Some(y)) if x > 0.0 => Some(y / x),
        _ => None,
    };
    println!(
        "{:<26} {:>6} {:>10} {:>10}",
        "operation", "n", "p50 ms", "p95 ms"
    );
    for s in &series {
        println!(
            "{:<26} {:>6} {:>10.2} {:>10.2}",
            s.name,
            s.samples.len(),
            s.percentile(50.0),
            s.percentile(95.0)
        );
    }
    println!(
        "time to first command (p50, create + first exec, {} ms between creates): \
         cold {}, pooled {}, pooled with a workspace {}",
        opts.gap.as_millis(),
        ms_or_dash(p50(FIRST_COLD)),
        ms_or_dash(p50(FIRST_POOLED)),
        ms_or_dash(p50(FIRST_POOLED_WS)),
    );
    if !phases.is_empty() {
        println!("cold create, where the time goes (mean ms over the paced creates):");
        for (name, ms) in &phases {
            println!("  {name:<32} {ms:>8.2}");
        }
    }
    if !pool_phases.is_empty() {
        println!("pooled create, where the time goes (mean ms over the pooled creates):");
        for (name, ms) in &pool_phases {
            println!("  {name:<32} {ms:>8.2}");
        }
    }
    let exec_ratio = ratio("exec round trip (true)", "docker exec (true)");
    let pool_ratio = ratio("pooled create", "cold create");
    if let Some(r) = pool_ratio {
        println!("cold create / pooled create (p50): {r:.1}x");
    }
    let first_exec_ratio = ratio("exec round trip (true)", "first exec after pooled create");
    if let Some(r) = first_exec_ratio {
        println!("first exec after a pooled create / any exec (p50): {r:.2}x");
    }
    let quiet_ratio = ratio("exec after 50 ms idle", "first exec, refilled + 50 ms idle");
    if let Some(r) = quiet_ratio {
        println!(
            "first exec after a pooled create / any exec, both after 50 ms idle (p50): {r:.2}x"
        );
    }
    let create_ratio = ratio("cold create", "docker run (true)");
    let ws_added = match (p50("cold create"), p50("create with workspace")) {
        (Some(c), Some(w)) => Some(w - c),
        _ => None,
    };
    if let Some(ms) = ws_added {
        println!("mounting an existing workspace adds (p50): {ms:.2} ms");
    }
    let net_added = match (p50("cold create"), p50("cold create with network")) {
        (Some(c), Some(w)) => Some(w - c),
        _ => None,
    };
    let net_ratio = ratio("cold create", "cold create with network");
    if let (Some(ms), Some(r)) = (net_added, net_ratio) {
        println!("network setup adds to a cold create (p50): {ms:.2} ms ({r:.3}x)");
    }
    if let Some(ms) = p50("pooled create + first exec, with network") {
        println!("pooled create with network + first exec (p50): {ms:.2} ms");
    }
    if let Some(r) = exec_ratio {
        println!("docker exec / sandkasten exec (p50): {r:.1}x");
    }
    if let Some(r) = create_ratio {
        println!("docker run / sandkasten cold create (p50): {r:.1}x");
    }
    let port_ratio = ratio(DIRECT, PROXIED);
    if let (Some(first), Some(r)) = (
        p50(PROC_FIRST_BYTE),
        ratio("exec round trip (true)", PROC_FIRST_BYTE),
    ) {
        println!("process start to first output byte (p50): {first:.2} ms ({r:.2}x an exec)");
    }
    if let (Some(ms), Some(r)) = (p50(FORK_CHILD), ratio("cold create", FORK_CHILD)) {
        println!(
            "fork per child with 1 GB in /workspace (p50): {ms:.2} ms ({r:.2}x a cold create)"
        );
    }
    let mcp_ratio = ratio(MCP_EXEC, MCP_RUN);
    if let (Some(ms), Some(r)) = (p50(MCP_RUN), mcp_ratio) {
        println!("MCP run_command of true (p50): {ms:.2} ms ({r:.2}x an HTTP exec, alternating)");
    }
    let e2b_ratio = ratio(E2B_EXEC, E2B_START);
    if let (Some(ms), Some(r)) = (p50(E2B_START), e2b_ratio) {
        println!(
            "e2b Start of bash -l -c true over Connect (p50): {ms:.2} ms ({r:.2}x an HTTP exec, alternating)"
        );
    }
    let port_added = match (p50(DIRECT), p50(PROXIED)) {
        (Some(d), Some(p)) => Some(p - d),
        _ => None,
    };
    if let (Some(r), Some(ms)) = (port_ratio, port_added) {
        println!("port request through the daemon / direct (p50): {r:.2}x, adds {ms:.2} ms");
    }
    if let Some(kb) = idle_rss_kb {
        println!("daemon idle RSS: {:.1} MB", kb as f64 / 1024.0);
    }
    if let Some(kb) = per_session_kb {
        println!(
            "memory per idle session (PSS of agent + shell): {:.2} MB",
            kb as f64 / 1024.0
        );
    }
    println!("docker: {}", docker.as_str().unwrap_or_default());
    let report = json!({
        "iterations": n,
        "gap_ms": opts.gap.as_millis() as u64,
        "first_command_ms": {
            "cold": p50(FIRST_COLD),
            "pooled": p50(FIRST_POOLED),
            "pooled_with_workspace": p50(FIRST_POOLED_WS),
        },
        "cold_create_phases_mean_ms": phases
            .iter()
            .map(|(n, ms)| json!({"phase": n, "ms": ms}))
            .collect::<Vec<_>>(),
        "pool_create_phases_mean_ms": pool_phases
            .iter()
            .map(|(n, ms)| json!({"phase": n, "ms": ms}))
            .collect::<Vec<_>>(),
        "series": series.iter().map(|s| json!({
            "name": s.name, "n": s.samples.len(),
            "p50_ms": s.percentile(50.0), "p95_ms": s.percentile(95.0),
        })).collect::<Vec<_>>(),
        "ratios": {
            "docker_exec_over_exec": exec_ratio,
            "docker_run_over_cold_create": create_ratio,
            "cold_create_over_pooled_create": pool_ratio,
            "first_exec_after_pooled_create_over_exec": first_exec_ratio,
            "first_exec_after_refill_over_exec": quiet_ratio,
            "port_proxied_over_direct": port_ratio,
            "mcp_run_command_over_exec": mcp_ratio,
            "e2b_start_over_exec": e2b_ratio,
        },
        "port_proxy_added_ms": port_added,
        "ports": ports_measured,
        "workspace_mount_added_ms": ws_added,
        "network_setup_added_ms": net_added,
        "cold_create_with_network_over_without": net_ratio,
        "daemon_idle_rss_kb": idle_rss_kb,
        "idle_session_pss_kb": per_session_kb,
        "docker": docker,
    });
    std::fs::write(&opts.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", opts.json.display()))?;
    println!("wrote {}", opts.json.display());
    drop(own);
    Ok(())
}

/// A minimal HTTP server (python3): answers every request with `ok` and
/// closes the connection. It forks once it listens and prints the
/// server's pid, so the command that starts it returns then (the server
/// lets go of the command's output).
const PORT_SERVER: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
os.setsid()
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    c.close()
"#;

const DIRECT: &str = "port request, direct";
const PROXIED: &str = "port request via daemon";

/// A python3 server started on the host for the direct reference; killed
/// (by its pid) on drop.
struct HostServer(i32);

impl Drop for HostServer {
    fn drop(&mut self) {
        // SAFETY: signalling the server this run started, by its pid.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The ports proxy against a direct connection in the same run: one
/// python3 server on the host's loopback and the same one inside session
/// `id`, each GET on a new connection to the server (the proxy makes a
/// new connection to the sandbox per request; the client keeps its
/// connection to the daemon, as a browser does).
fn ports_series(api: &Api, id: &str, n: usize) -> Result<Vec<Series>> {
    let port = 18080;
    let out = Command::new("python3")
        .args(["-c", PORT_SERVER, "0"])
        .stderr(Stdio::inherit())
        .output()
        .context("python3 on the host (the direct reference)")?;
    if !out.status.success() {
        bail!("the host's python3 server did not start");
    }
    let _host = HostServer(String::from_utf8_lossy(&out.stdout).trim().parse()?);
    // Port 0 on the host: find what it bound through its listening socket.
    let host_port = host_listen_port(_host.0).context("the host server's port")?;
    let quoted = PORT_SERVER.replace('\'', "'\\''");
    let v = api.exec(
        id,
        &format!("python3 -c '{quoted}' {port} </dev/null >/dev/null 2>&1"),
    )?;
    if v["exit_code"] != 0 {
        bail!("python3 in the sandbox: {}", v["output"]);
    }
    let direct_url = format!("http://127.0.0.1:{host_port}/");
    let proxied_url = format!("{}/v1/sessions/{id}/ports/{port}/", api.url);
    let get = |url: &str, key: bool| -> Result<()> {
        let mut rb = api.http.get(url);
        if key {
            rb = rb.bearer_auth(&api.key);
        }
        let r = rb.send()?;
        if !r.status().is_success() || r.text()? != "ok" {
            bail!("GET {url} did not answer ok");
        }
        Ok(())
    };
    // Warm both paths, then interleave the samples (the same conditions
    // for both).
    for _ in 0..5 {
        get(&direct_url, false)?;
        get(&proxied_url, true)?;
    }
    let mut direct = Series {
        name: DIRECT,
        samples: vec![],
    };
    let mut proxied = Series {
        name: PROXIED,
        samples: vec![],
    };
    for _ in 0..n {
        direct.samples.push(time(|| get(&direct_url, false))?.0);
        proxied.samples.push(time(|| get(&proxied_url, true))?.0);
    }
    Ok(vec![direct, proxied])
}

/// The TCP port process `pid` listens on (its only listening socket).
fn host_listen_port(pid: i32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // st 0A: LISTEN; field 9: the inode.
        (f.get(3) == Some(&"0A") && inodes.iter().any(|i| Some(&i.as_str()) == f.get(9)))
            .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
            .flatten()
    })
}
/// The bench daemons allow sandboxes a network.
const NETWORK_CONFIG: &str = "network:\n  allow_full: true\n";

/// The policy of the "with network" creates: a link, and an allow list
/// (documentation range: nothing is sent there).
static NETWORK_POLICY: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"network": {"mode": "full", "allow_out": ["203.0.113.0/24", "2001:db8::/32"]}}),
);

/// The image of the bench's pools: the daemon's default image where the
/// environment names one (`SANDKASTEN_DEFAULT_IMAGE`, e.g. with
/// `SANDKASTEN_RUNTIME=docker`), else the native `base`.
fn pool_image() -> String {
    std::env::var("SANDKASTEN_DEFAULT_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| "base".into())
}

/// Pooled creates with a network and the first exec after each, timed
/// together (each sample waits, untimed, for a full pool).
fn pooled_network_series(api: &Api, n: usize) -> Result<Option<Series>> {
    let wait_full = || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = api.call(reqwest::Method::GET, "/v1/pool", None)?;
            if p["images"][pool_image()]["idle"].as_u64() == Some(3) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pool did not refill within 60 s: {p}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut create_net = Series {
        name: "pooled create + first exec, with network",
        samples: vec![],
    };
    for _ in 0..n {
        wait_full()?;
        let mut body = NETWORK_POLICY.clone();
        body["image"] = json!(pool_image());
        let (ms, v) = time(|| api.call(reqwest::Method::POST, "/v1/sessions", Some(body)))?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        if v["acquire_source"] != "pool" {
            bail!("a create with network and a full pool was not served from it: {v}");
        }
        let (exec_ms, _) = time(|| api.exec(&id, "true"))?;
        create_net.samples.push(ms + exec_ms);
        api.destroy(&id)?;
    }
    Ok(Some(create_net))
}

/// Time to first command on the cold path, as a user meets it: a pause of
/// `gap`, then a create and at once its first exec (`true`); the sum is
/// the headline, its two parts are series of their own.
fn first_command_series(api: &Api, n: usize, gap: Duration) -> Result<Vec<Series>> {
    let mut total = Series {
        name: FIRST_COLD,
        samples: vec![],
    };
    let mut create = Series {
        name: "cold create (paced)",
        samples: vec![],
    };
    let mut exec = Series {
        name: "first exec after cold create",
        samples: vec![],
    };
    for _ in 0..n {
        std::thread::sleep(gap);
        let (c, id) = time(|| api.create())?;
        let (e, _) = time(|| api.exec(&id, "true"))?;
        create.samples.push(c);
        exec.samples.push(e);
        total.samples.push(c + e);
        api.destroy(&id)?;
    }
    Ok(vec![total, create, exec])
}

/// The headline series' names.
const FIRST_COLD: &str = "first command, cold";
const FIRST_POOLED: &str = "first command, pooled";
const FIRST_POOLED_WS: &str = "first command, pooled + workspace";

/// Pooled creates (without and with a workspace) and the first exec after
/// each, against a daemon whose default image has a pool. Each sample waits
/// (untimed) until the pool is back at target, so every sample is a hit.
/// `phases`: the daemon's account of where a pooled create's time goes
/// (mean ms per step over these creates).
fn pooled_series(
    api: &Api,
    n: usize,
    gap: Duration,
    phases: &mut Vec<(String, f64)>,
) -> Result<Option<Vec<Series>>> {
    let pool = api.call(reqwest::Method::GET, "/v1/pool", None)?;
    let Some((image, target)) = pool["images"].as_object().and_then(|m| {
        m.iter().find_map(|(k, v)| {
            v["target"]
                .as_u64()
                .filter(|t| *t > 0)
                .map(|t| (k.clone(), t))
        })
    }) else {
        return Ok(None);
    };
    let wait_full = || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = api.call(reqwest::Method::GET, "/v1/pool", None)?;
            if p["images"][&image]["idle"].as_u64() == Some(target) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pool did not refill within 60 s: {p}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    api.call(
        reqwest::Method::POST,
        "/v1/workspaces",
        Some(json!({ "id": "bench-pool-ws" })),
    )?;
    let mut create = Series {
        name: "pooled create",
        samples: vec![],
    };
    let mut create_ws = Series {
        name: "pooled create with workspace",
        samples: vec![],
    };
    // Where a workspace cannot be bound into a running sandbox (a remote
    // engine, gVisor) such creates are served cold, by design.
    let mut create_ws_cold = Series {
        name: "create with workspace (pool cannot bind: cold)",
        samples: vec![],
    };
    let mut first_exec = Series {
        name: "first exec after pooled create",
        samples: vec![],
    };
    let mut first = Series {
        name: FIRST_POOLED,
        samples: vec![],
    };
    let mut first_ws = Series {
        name: FIRST_POOLED_WS,
        samples: vec![],
    };
    let phases_before = api.phases(POOL_PHASES).unwrap_or_default();
    for i in 0..(2 * n) {
        wait_full()?;
        std::thread::sleep(gap);
        let body = if i % 2 == 0 {
            json!({ "image": image })
        } else {
            json!({ "image": image, "workspace_id": "bench-pool-ws" })
        };
        let (ms, v) = time(|| api.call(reqwest::Method::POST, "/v1/sessions", Some(body)))?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let (exec_ms, _) = time(|| api.exec(&id, "true"))?;
        match (i % 2 == 0, v["acquire_source"] == "pool") {
            (true, true) => {
                create.samples.push(ms);
                first.samples.push(ms + exec_ms);
            }
            (false, true) => {
                create_ws.samples.push(ms);
                first_ws.samples.push(ms + exec_ms);
            }
            (false, false) => create_ws_cold.samples.push(ms),
            (true, false) => bail!("a create with a full pool was not served from it: {v}"),
        }
        first_exec.samples.push(exec_ms);
        api.destroy(&id)?;
    }
    *phases = phase_means(&phases_before, &api.phases(POOL_PHASES).unwrap_or_default());
    let _ = api.call(
        reqwest::Method::DELETE,
        "/v1/workspaces/bench-pool-ws",
        None,
    );
    // The same first exec once the refill the create started is done and
    // after the same idle gap as "exec after 50 ms idle": setup deferred to
    // the first exec would show as a difference between the two.
    let mut first_exec_quiet = Series {
        name: "first exec, refilled + 50 ms idle",
        samples: vec![],
    };
    for _ in 0..n {
        wait_full()?;
        let v = api.call(
            reqwest::Method::POST,
            "/v1/sessions",
            Some(json!({ "image": image })),
        )?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        wait_full()?;
        std::thread::sleep(IDLE_GAP);
        let (ms, _) = time(|| api.exec(&id, "true"))?;
        first_exec_quiet.samples.push(ms);
        api.destroy(&id)?;
    }
    let all = [
        first,
        first_ws,
        create,
        create_ws,
        create_ws_cold,
        first_exec,
        first_exec_quiet,
    ];
    Ok(Some(
        all.into_iter().filter(|s| !s.samples.is_empty()).collect(),
    ))
}

fn ms_or_dash(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:.2} ms"))
}

fn uuid_like() -> String {
    let b: [u8; 12] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_read_from_the_metrics_and_averaged() {
        let text = "# TYPE sandkasten_cold_create_phase_seconds summary\n\
            sandkasten_cold_create_phase_seconds_sum{phase=\"runtime\"} 0.03\n\
            sandkasten_cold_create_phase_seconds_count{phase=\"runtime\"} 3\n\
            sandkasten_cold_create_phase_seconds_sum{phase=\"a \\\"q\\\"\"} 0.5\n\
            sandkasten_cold_create_phase_seconds_count{phase=\"a \\\"q\\\"\"} 1\n\
            sandkasten_sessions{state=\"running\"} 1\n";
        let after = parse_phases(text, COLD_PHASES);
        assert!(parse_phases(text, POOL_PHASES).is_empty());
        assert_eq!(
            after,
            vec![
                ("runtime".to_string(), 0.03, 3),
                ("a \"q\"".to_string(), 0.5, 1)
            ]
        );
        let before = vec![("runtime".to_string(), 0.01, 1)];
        let means = phase_means(&before, &after);
        assert_eq!(means.len(), 2);
        assert!((means[0].1 - 10.0).abs() < 1e-9, "{means:?}");
        assert!((means[1].1 - 500.0).abs() < 1e-9, "{means:?}");
    }
}
