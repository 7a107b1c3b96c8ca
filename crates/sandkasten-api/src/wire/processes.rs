//! The wire format of background processes: start requests, process
//! descriptions, the SSE events of a process stream, stdin, signals and
//! resizes.

use crate::error::ApiError;
use sandkasten_engine as engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Who a process runs as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProcessUser {
    /// The sandbox user (uid 1000 inside), as commands of the shell.
    #[default]
    Sandbox,
    /// Root of the sandbox (not of the host).
    Root,
}

/// A PTY's size.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
pub(crate) struct PtySize {
    #[schema(example = 24)]
    pub rows: u16,
    #[schema(example = 80)]
    pub cols: u16,
}

/// `POST /v1/sessions/{id}/processes` (and `/processes/stream`).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct StartProcessRequest {
    /// A shell command line, run as `/bin/sh -c CMD` (for bash, give
    /// `argv: ["bash", "-c", CMD]`). Exactly one of `cmd` and `argv`.
    #[schema(example = "python3 -m http.server 8000")]
    pub cmd: Option<String>,
    /// Program and arguments, no shell (the program is looked up in
    /// `PATH`).
    #[schema(example = json!(["python3", "-c", "print(1)"]))]
    pub argv: Option<Vec<String>>,
    /// Over the session's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/workspace`).
    pub cwd: Option<String>,
    #[serde(default)]
    pub user: ProcessUser,
    /// Run in a PTY of this size: stdout and stderr are then one stream
    /// (`pty`), `TERM=xterm-256color`.
    pub pty: Option<PtySize>,
    /// Keep stdin open for `…/stdin` (default: `/dev/null`). A PTY always
    /// takes input.
    #[serde(default)]
    pub stdin: bool,
    /// A name to find the process by instead of its pid: 1-64 characters
    /// of `[A-Za-z0-9._-]`, not all digits; unique among running processes.
    #[schema(example = "server")]
    pub tag: Option<String>,
}

impl StartProcessRequest {
    /// The engine's spec, or the first thing wrong with the request.
    pub(crate) fn into_spec(self) -> Result<engine::ProcSpec, ApiError> {
        let bad = |m: &str| Err(ApiError::InvalidRequest(m.into()));
        let argv = match (self.cmd, self.argv) {
            (Some(_), Some(_)) => return bad("give either cmd or argv, not both"),
            (None, None) => return bad("cmd or argv is required"),
            (Some(cmd), None) if cmd.trim().is_empty() => return bad("cmd must not be empty"),
            (Some(cmd), None) => vec!["/bin/sh".into(), "-c".into(), cmd],
            (None, Some(argv)) if argv.first().is_none_or(String::is_empty) => {
                return bad("argv must start with a program")
            }
            (None, Some(argv)) => argv,
        };
        if let Some(tag) = &self.tag {
            check_tag(tag)?;
        }
        if let Some(p) = self.pty {
            if p.rows == 0 || p.cols == 0 {
                return bad("pty.rows and pty.cols must be at least 1");
            }
        }
        Ok(engine::ProcSpec {
            argv,
            env: self.env.into_iter().collect(),
            cwd: self.cwd,
            root: self.user == ProcessUser::Root,
            pty: self.pty.map(|p| engine::PtySize {
                rows: p.rows,
                cols: p.cols,
            }),
            stdin: self.stdin || self.pty.is_some(),
            tag: self.tag,
        })
    }
}

/// A tag: 1-64 characters of `[A-Za-z0-9._-]`, not all digits (those are
/// pids in a path).
pub(crate) fn check_tag(tag: &str) -> Result<(), ApiError> {
    engine::check_process_tag(tag).map_err(ApiError::from)
}

/// The `{proc}` of a process route: a pid, or a tag.
pub(crate) fn proc_ref(s: &str) -> Result<engine::ProcRef, ApiError> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(engine::ProcRef::Pid)
            .map_err(|_| ApiError::InvalidRequest(format!("pid {s} is out of range")));
    }
    check_tag(s)?;
    Ok(engine::ProcRef::Tag(s.to_string()))
}

/// A process and how far it got.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProcessInfo {
    /// Its pid inside the sandbox.
    #[schema(example = 42)]
    pub pid: u32,
    pub tag: Option<String>,
    pub argv: Vec<String>,
    pub cwd: String,
    pub user: ProcessUser,
    pub pty: Option<PtySize>,
    /// Stdin is open for input.
    pub stdin: bool,
    /// Unix ms.
    pub started_at: i64,
    pub running: bool,
    /// Once ended: the exit status, or 128 + N for death by signal N.
    pub exit_code: Option<i32>,
    /// Once ended by a signal: its number.
    pub signal: Option<i32>,
}

impl From<engine::ProcInfo> for ProcessInfo {
    fn from(p: engine::ProcInfo) -> Self {
        ProcessInfo {
            pid: p.pid,
            tag: p.tag,
            argv: p.argv,
            cwd: p.cwd,
            user: if p.root {
                ProcessUser::Root
            } else {
                ProcessUser::Sandbox
            },
            pty: p.pty.map(|s| PtySize {
                rows: s.rows,
                cols: s.cols,
            }),
            stdin: p.stdin,
            started_at: p.started_ms,
            running: p.end.is_none(),
            exit_code: p.end.map(|e| e.exit_code),
            signal: p.end.and_then(|e| e.signal),
        }
    }
}

/// Query of a process stream.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProcessStreamQuery {
    /// Send the output kept since the start first (up to 1 MiB), then
    /// live (default true); false: only what comes from now on.
    pub replay: Option<bool>,
    /// `text` (default: `data` is UTF-8, invalid bytes as U+FFFD) or
    /// `base64` (`data_base64`, byte-exact).
    pub encoding: Option<OutputEncoding>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutputEncoding {
    #[default]
    Text,
    Base64,
}

/// Data of an SSE `stdout`, `stderr` or `pty` event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProcessOutputEvent {
    /// The bytes as text (encoding `text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The bytes (encoding `base64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// Data of the SSE `end` event that ends a process stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProcessEndEvent {
    pub exit_code: i32,
    pub signal: Option<i32>,
}

/// Query of `POST …/stdin`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StdinQuery {
    /// Close stdin once the body is written.
    pub close: Option<bool>,
}

/// `POST …/signal`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct SignalRequest {
    /// A name (`TERM`, `SIGTERM`, `KILL`, `INT`, `HUP`, `QUIT`, `USR1`,
    /// `USR2`, `STOP`, `CONT`, `WINCH`, `ALRM`) or a number 1-64.
    #[schema(value_type = String, example = "TERM")]
    pub signal: serde_json::Value,
}

impl SignalRequest {
    pub(crate) fn number(&self) -> Result<i32, ApiError> {
        let bad = || {
            Err(ApiError::InvalidRequest(format!(
                "unknown signal {}: use a name such as TERM or a number 1-64",
                self.signal
            )))
        };
        match &self.signal {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(n @ 1..=64) => Ok(n as i32),
                _ => bad(),
            },
            serde_json::Value::String(s) => {
                let name = s.to_ascii_uppercase();
                let name = name.strip_prefix("SIG").unwrap_or(&name);
                Ok(match name {
                    "HUP" => libc_sig::HUP,
                    "INT" => libc_sig::INT,
                    "QUIT" => libc_sig::QUIT,
                    "KILL" => libc_sig::KILL,
                    "USR1" => libc_sig::USR1,
                    "USR2" => libc_sig::USR2,
                    "ALRM" => libc_sig::ALRM,
                    "TERM" => libc_sig::TERM,
                    "CONT" => libc_sig::CONT,
                    "STOP" => libc_sig::STOP,
                    "WINCH" => libc_sig::WINCH,
                    _ => match name.parse::<i32>() {
                        Ok(n @ 1..=64) => n,
                        _ => return bad(),
                    },
                })
            }
            _ => bad(),
        }
    }
}

/// Linux signal numbers (x86-64 and arm64 agree on these).
mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const KILL: i32 = 9;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const ALRM: i32 = 14;
    pub const TERM: i32 = 15;
    pub const CONT: i32 = 18;
    pub const STOP: i32 = 19;
    pub const WINCH: i32 = 28;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_names_and_pids_are_numbers() {
        assert!(matches!(proc_ref("42"), Ok(engine::ProcRef::Pid(42))));
        assert!(matches!(proc_ref("web-1"), Ok(engine::ProcRef::Tag(t)) if t == "web-1"));
        assert!(proc_ref("99999999999").is_err());
        assert!(proc_ref("a/b").is_err());
        assert!(proc_ref("").is_err());
        assert!(check_tag("123").is_err());
        assert!(check_tag(&"x".repeat(65)).is_err());
    }

    #[test]
    fn signals_by_name_or_number() {
        let s = |v: serde_json::Value| SignalRequest { signal: v }.number();
        assert_eq!(s(serde_json::json!("TERM")).unwrap(), 15);
        assert_eq!(s(serde_json::json!("sigkill")).unwrap(), 9);
        assert_eq!(s(serde_json::json!(2)).unwrap(), 2);
        assert!(s(serde_json::json!(0)).is_err());
        assert!(s(serde_json::json!("NOPE")).is_err());
        assert!(s(serde_json::json!(true)).is_err());
    }

    #[test]
    fn a_start_needs_exactly_one_of_cmd_and_argv() {
        let req = |v: serde_json::Value| {
            serde_json::from_value::<StartProcessRequest>(v)
                .unwrap()
                .into_spec()
        };
        assert!(req(serde_json::json!({})).is_err());
        assert!(req(serde_json::json!({"cmd": "x", "argv": ["y"]})).is_err());
        assert!(req(serde_json::json!({"argv": []})).is_err());
        let spec = req(serde_json::json!({"cmd": "echo hi", "tag": "t"})).unwrap();
        assert_eq!(spec.argv, ["/bin/sh", "-c", "echo hi"]);
        let spec = req(serde_json::json!({"argv": ["ls"], "pty": {"rows": 5, "cols": 9}})).unwrap();
        assert!(spec.stdin, "a PTY takes input");
    }
}
