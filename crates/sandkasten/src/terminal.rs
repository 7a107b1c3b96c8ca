//! `sandkasten exec` (a process whose exit code passes through) and
//! `sandkasten shell` (an interactive terminal over the daemon's
//! `/v1/sessions/{id}/pty` WebSocket, in raw mode, following the local
//! terminal's size).

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use std::io::Write;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Runs `argv` as a process of session `id`, copying its stdout and stderr
/// to ours; answers its exit code.
pub async fn exec(
    url: &str,
    key: &str,
    id: &str,
    argv: Vec<String>,
    root: bool,
    cwd: Option<String>,
) -> Result<u8> {
    let mut body = serde_json::json!({"argv": argv, "user": if root { "root" } else { "sandbox" }});
    if let Some(c) = cwd {
        body["cwd"] = c.into();
    }
    let resp = reqwest::Client::new()
        .post(format!(
            "{url}/v1/sessions/{id}/processes/stream?encoding=base64"
        ))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .context("reaching the daemon")?;
    if !resp.status().is_success() {
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!(
            "{status}: {}",
            v["message"].as_str().unwrap_or("request failed")
        );
    }
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.context("reading the process's output")?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let v: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                data.clear();
                let bytes = || {
                    base64::engine::general_purpose::STANDARD
                        .decode(v["data_base64"].as_str().unwrap_or_default())
                        .unwrap_or_default()
                };
                match event.as_str() {
                    "stdout" | "pty" => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(&bytes())?;
                        o.flush()?;
                    }
                    "stderr" => {
                        let mut e = std::io::stderr().lock();
                        e.write_all(&bytes())?;
                        e.flush()?;
                    }
                    "end" => return Ok(v["exit_code"].as_i64().unwrap_or(1) as u8),
                    "error" => bail!(
                        "{}",
                        v["error"]
                            .as_str()
                            .unwrap_or("the process stream broke off")
                    ),
                    _ => {}
                }
            }
        }
    }
    bail!("the daemon closed the stream before the process ended")
}

/// An interactive terminal in session `id`; answers the shell's exit code.
pub async fn shell(url: &str, key: &str, id: &str, cmd: Option<String>, root: bool) -> Result<u8> {
    let (rows, cols) = window_size().unwrap_or((24, 80));
    let mut target = format!(
        "{}/v1/sessions/{id}/pty?rows={rows}&cols={cols}",
        url.replacen("http", "ws", 1)
    );
    if root {
        target.push_str("&user=root");
    }
    if let Some(c) = cmd {
        target.push_str("&cmd=");
        target.push_str(&percent_encode(&c));
    }
    let mut req = target.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let (socket, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(s) => s,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            bail!(
                "{}: {}",
                resp.status(),
                v["message"].as_str().unwrap_or("refused")
            );
        }
        Err(e) => return Err(e).context("opening the terminal"),
    };
    let (mut tx, mut rx) = socket.split();
    let _raw = RawMode::enter();

    // Stdin is read on a thread of its own (a blocking read).
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a valid buffer from fd 0.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 || in_tx.blocking_send(buf[..n as usize].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["type"] == "exit" {
                        return Ok(v["exit_code"].as_i64().unwrap_or(0) as u8);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("the terminal's connection"),
                None => bail!("the daemon closed the terminal"),
            },
            input = in_rx.recv(), if stdin_open => {
                let data = input.unwrap_or_else(|| {
                    // Our stdin ended: end-of-file for the shell, once.
                    stdin_open = false;
                    vec![4u8]
                });
                // A failed send shows up as the connection's end above.
                let _ = tx.send(Message::Binary(data.into())).await;
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = window_size() {
                    let m = serde_json::json!({"type": "resize", "rows": rows, "cols": cols});
                    tx.send(Message::Text(m.to_string().into())).await?;
                }
            }
        }
    }
}

/// The local terminal's size, if stdout is one.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: plain ioctl with a valid out pointer.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// The local terminal in raw mode while this lives (when stdin is one).
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        // SAFETY: termios calls on fd 0 with valid pointers.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores what tcgetattr gave.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
