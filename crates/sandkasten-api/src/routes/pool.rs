//! `GET /v1/pool` and `GET /metrics` (Prometheus text format).

use crate::wire::PoolInfo;
use crate::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use sandkasten_engine::{HistogramSnapshot, MetricsSnapshot};
use std::fmt::Write;

/// The pre-warmed pool per image: target, idle, refills in flight, hits,
/// misses, discarded and recycled sandboxes, refill failures with the last
/// error, and the acquire wait percentiles.
#[utoipa::path(
    get,
    path = "/v1/pool",
    tag = "pool",
    responses((status = 200, description = "The pool per image", body = PoolInfo))
)]
pub(crate) async fn pool(State(state): State<AppState>) -> Json<PoolInfo> {
    Json(state.backend.pool_stats().into())
}

/// Metrics in the Prometheus text format (version 0.0.4): the pool per
/// image, sessions by state, creates by source, exec and pool-acquire
/// duration histograms.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.backend.metrics()),
    )
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    header(out, name, "histogram", help);
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// The whole exposition.
pub(crate) fn render(m: &MetricsSnapshot) -> String {
    let mut out = String::new();
    type Field = fn(&sandkasten_engine::ImagePoolStats) -> u64;
    let per_image: [(&str, &str, &str, Field); 8] = [
        (
            "sandkasten_pool_target",
            "gauge",
            "Configured pool size per image.",
            |s| s.target as u64,
        ),
        (
            "sandkasten_pool_idle",
            "gauge",
            "Ready pooled sandboxes per image.",
            |s| s.idle as u64,
        ),
        (
            "sandkasten_pool_in_flight",
            "gauge",
            "Pooled sandboxes being started.",
            |s| s.in_flight as u64,
        ),
        (
            "sandkasten_pool_hits_total",
            "counter",
            "Creates served from the pool.",
            |s| s.hits,
        ),
        (
            "sandkasten_pool_misses_total",
            "counter",
            "Creates of a pooled image served cold.",
            |s| s.misses,
        ),
        (
            "sandkasten_pool_discarded_total",
            "counter",
            "Pooled sandboxes found dead and thrown away.",
            |s| s.discarded,
        ),
        (
            "sandkasten_pool_recycled_total",
            "counter",
            "Pooled sandboxes replaced after max_idle_seconds.",
            |s| s.recycled,
        ),
        (
            "sandkasten_pool_refill_failures_total",
            "counter",
            "Failed attempts to start a pooled sandbox.",
            |s| s.refill_failures,
        ),
    ];
    for (name, kind, help, f) in per_image {
        header(&mut out, name, kind, help);
        for (image, s) in &m.pool.images {
            let _ = writeln!(out, "{name}{{image=\"{}\"}} {}", label(image), f(s));
        }
    }
    let summaries = [
        (
            "sandkasten_cold_create_phase_seconds",
            "Time spent in each step of cold creates since start (runtime: the runtime's own steps, inside runtime).",
            &m.cold_create_phases,
        ),
        (
            "sandkasten_pool_create_phase_seconds",
            "Time spent in each step of pooled creates since start (taking a pooled sandbox and binding the request to it).",
            &m.pool_create_phases,
        ),
    ];
    for (name, help, phases) in summaries {
        header(&mut out, name, "summary", help);
        for (phase, sum, count) in phases {
            let p = label(phase);
            let _ = writeln!(out, "{name}_sum{{phase=\"{p}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{phase=\"{p}\"}} {count}");
        }
    }
    header(
        &mut out,
        "sandkasten_sessions",
        "gauge",
        "Live sessions by state.",
    );
    for (state, n) in &m.sessions {
        let _ = writeln!(out, "sandkasten_sessions{{state=\"{state}\"}} {n}");
    }
    header(
        &mut out,
        "sandkasten_sessions_ended_total",
        "counter",
        "Sessions ended since start, by final state.",
    );
    for (state, n) in &m.sessions_ended {
        let _ = writeln!(
            out,
            "sandkasten_sessions_ended_total{{state=\"{state}\"}} {n}"
        );
    }
    header(
        &mut out,
        "sandkasten_network_denials_total",
        "counter",
        "Names and connections sandboxes' network policies refused since start.",
    );
    let _ = writeln!(
        out,
        "sandkasten_network_denials_total {}",
        m.network_denials
    );
    header(
        &mut out,
        "sandkasten_session_creates_total",
        "counter",
        "Sessions created since start, by source (pool or cold).",
    );
    for (source, n) in &m.creates {
        let _ = writeln!(
            out,
            "sandkasten_session_creates_total{{source=\"{source}\"}} {n}"
        );
    }
    histogram(
        &mut out,
        "sandkasten_exec_duration_seconds",
        "Duration of execs, from start in the sandbox to the result.",
        &m.exec_duration,
    );
    histogram(
        &mut out,
        "sandkasten_pool_acquire_seconds",
        "Time a create spent taking and preparing a pooled sandbox.",
        &m.pool_acquire,
    );
    out
}
