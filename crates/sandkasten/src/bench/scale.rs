//! `sandkasten bench --sessions N` and `--clients N`: latency at scale.
//!
//! `--sessions N`: time to first command (paced creates, as the headline)
//! with no other session, then again with N idle sessions alive, and the
//! host memory those N take (`MemAvailable` before and after, per
//! session). `--clients N`: N threads, each with a session of its own,
//! exec `true` back to back for a fixed time: execs per second and the
//! p50/p99 latency.

use super::{first_command_series, phase_means, time, Api, Series};
use anyhow::Result;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long the clients run.
const CLIENTS_FOR: Duration = Duration::from_secs(5);

/// Host memory the kernel could give out now, in KiB.
fn mem_available_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The headline and its parts, as `first_command_series` gives them.
fn p50s(s: &[Series]) -> Value {
    json!({
        "first_command_ms": s[0].percentile(50.0),
        "create_ms": s[1].percentile(50.0),
        "first_exec_ms": s[2].percentile(50.0),
    })
}

/// Step name to mean milliseconds, for the JSON report.
fn phase_map(phases: &[(String, f64)]) -> Value {
    Value::Object(
        phases
            .iter()
            .map(|(n, ms)| (n.clone(), json!(ms)))
            .collect(),
    )
}

/// `--sessions N`: the headline with none and with `sessions` idle ones.
pub(super) fn sessions(api: &Api, sessions: usize, n: usize, gap: Duration) -> Result<Value> {
    let p0 = api.cold_phases().unwrap_or_default();
    let empty = first_command_series(api, n, gap)?;
    let empty_phases = phase_means(&p0, &api.cold_phases().unwrap_or_default());
    let before = mem_available_kb();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(sessions);
    let result = (|| -> Result<Value> {
        for i in 0..sessions {
            ids.push(api.create()?);
            if (i + 1) % 100 == 0 || i + 1 == sessions {
                println!(
                    "  {} of {sessions} idle sessions ({:.0} s)",
                    i + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        // Each has run its first command, as an agent's sandbox has.
        for id in &ids {
            api.exec(id, "true")?;
        }
        let after = mem_available_kb();
        let p1 = api.cold_phases().unwrap_or_default();
        let full = first_command_series(api, n, gap)?;
        let full_phases = phase_means(&p1, &api.cold_phases().unwrap_or_default());
        let per_session_kb = match (before, after) {
            (Some(b), Some(a)) if sessions > 0 => Some(b.saturating_sub(a) / sessions as u64),
            _ => None,
        };
        let ratio = full[0].percentile(50.0) / empty[0].percentile(50.0);
        println!(
            "time to first command (p50): {:.2} ms with no other session, {:.2} ms with {sessions} \
             idle ({ratio:.2}x); create {:.2} → {:.2} ms, first exec {:.2} → {:.2} ms",
            empty[0].percentile(50.0),
            full[0].percentile(50.0),
            empty[1].percentile(50.0),
            full[1].percentile(50.0),
            empty[2].percentile(50.0),
            full[2].percentile(50.0),
        );
        // Which steps of a cold create grow with the live sessions.
        println!("create steps (mean ms), with none → with {sessions}:");
        for (name, ms) in &full_phases {
            let before = empty_phases
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v);
            println!(
                "  {name:<32} {:>7} → {ms:>7.3}",
                before.map_or("-".to_string(), |v| format!("{v:.3}"))
            );
        }
        if let Some(kb) = per_session_kb {
            println!(
                "host memory per idle session: {:.2} MB (MemAvailable, {sessions} sessions)",
                kb as f64 / 1024.0
            );
        }
        Ok(json!({
            "sessions": sessions,
            "empty": p50s(&empty),
            "loaded": p50s(&full),
            "loaded_over_empty": ratio,
            "empty_phases_mean_ms": phase_map(&empty_phases),
            "loaded_phases_mean_ms": phase_map(&full_phases),
            "host_kb_per_session": per_session_kb,
        }))
    })();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let _ = api.destroy(id);
        if (i + 1) % 500 == 0 {
            println!(
                "  destroyed {} of {} ({:.0} s)",
                i + 1,
                ids.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    result
}

/// `--clients N`: N threads exec `true` back to back, each in a session
/// of its own, for [`CLIENTS_FOR`].
pub(super) fn clients(api: &Api, clients: usize) -> Result<Value> {
    let ids: Vec<String> = (0..clients).map(|_| api.create()).collect::<Result<_>>()?;
    for id in &ids {
        api.exec(id, "true")?;
    }
    let until = Instant::now() + CLIENTS_FOR;
    let started = Instant::now();
    let per_client: Vec<Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    while Instant::now() < until {
                        let (ms, _) = time(|| api.exec(id, "true"))?;
                        lat.push(ms);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    for id in &ids {
        let _ = api.destroy(id);
    }
    let mut all = Series {
        name: "exec (true), concurrent",
        samples: vec![],
    };
    for r in per_client {
        all.samples.extend(r?);
    }
    let per_second = all.samples.len() as f64 / elapsed;
    println!(
        "{clients} concurrent clients: {per_second:.0} execs/s, p50 {:.2} ms, p99 {:.2} ms \
         ({} execs in {elapsed:.1} s)",
        all.percentile(50.0),
        all.percentile(99.0),
        all.samples.len()
    );
    Ok(json!({
        "clients": clients,
        "execs_per_second": per_second,
        "p50_ms": all.percentile(50.0),
        "p99_ms": all.percentile(99.0),
        "execs": all.samples.len(),
    }))
}
