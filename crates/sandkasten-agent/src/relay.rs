//! `sandkasten-agent relay --socket PATH`: the daemon's way in to the agent
//! of a container on a remote engine, where no host path is shared.
//!
//! The daemon starts this once per connection with the engine's exec API
//! (root, attached stdin and stdout, no tty) and speaks the agent protocol
//! through it: stdin is copied to the agent's socket and the socket to
//! stdout, byte for byte. The socket sits in a 0700 root-only tmpfs, so
//! only root in the container (this relay, started by the engine) reaches
//! it, never the sandbox user.
//!
//! A relay started before the agent listens waits for the socket to appear
//! (inotify on its directory: the agent renames the listening socket into
//! place), up to `--wait-ms`. Either side closing ends the relay: the
//! daemon hanging up closes the connection to the agent, and the agent's
//! end (the container stopping) ends the daemon's stream.

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long a relay waits for the agent's socket unless told otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

struct Args {
    socket: PathBuf,
    wait: Duration,
}

fn parse(args: &[String]) -> Option<Args> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let wait = match value("--wait-ms") {
        Some(v) => Duration::from_millis(v.parse().ok()?),
        None => DEFAULT_WAIT,
    };
    Some(Args {
        socket: PathBuf::from(value("--socket")?),
        wait,
    })
}

pub fn run(args: &[String]) -> ExitCode {
    let Some(args) = parse(args) else {
        eprintln!("usage: sandkasten-agent relay --socket PATH [--wait-ms N]");
        return ExitCode::from(2);
    };
    let stream = match connect_when_listening(&args.socket, args.wait) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "sandkasten-agent relay: connecting to {}: {e}",
                args.socket.display()
            );
            return ExitCode::from(1);
        }
    };
    // Root was needed to reach the socket, nothing more: from here on the
    // relay keeps uid 0 (so the sandbox user cannot signal it) without a
    // capability, undumpable, under the sandbox's seccomp filter.
    if let Err(e) = confine() {
        eprintln!("sandkasten-agent relay: {e}");
        return ExitCode::from(1);
    }
    match pump(stream, io::stdin(), io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandkasten-agent relay: {e}");
            ExitCode::from(1)
        }
    }
}

/// Drops every capability and installs the sandbox's seccomp filter.
fn confine() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    crate::init::caps::set_capabilities(0)?;
    crate::init::seccomp::install()
}

/// Connects to `path`, waiting for it to appear (an inotify event, never a
/// poll) for at most `wait`.
fn connect_when_listening(path: &Path, wait: Duration) -> io::Result<UnixStream> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Watch first, then try: a socket renamed into place in between is
    // either found by the attempt or reported by the watch.
    let watch = Inotify::watch(dir)?;
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !watch.wait(left)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the agent did not listen within {} ms", wait.as_millis()),
            ));
        }
    }
}

/// Copies `input` to the agent and the agent to `output` until either
/// side ends.
fn pump(
    stream: UnixStream,
    mut input: impl Read + Send + 'static,
    mut output: impl Write,
) -> io::Result<()> {
    let mut to_agent = stream.try_clone()?;
    std::thread::Builder::new()
        .name("relay-in".into())
        .spawn(move || {
            let _ = io::copy(&mut input, &mut to_agent);
            // The daemon hung up: the agent reads the end of its
            // connection and closes it, which ends the copy below.
            let _ = to_agent.shutdown(std::net::Shutdown::Write);
        })?;
    let mut from_agent = stream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_agent.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buf[..n])?;
        output.flush()?;
    }
}

/// An inotify watch for entries created or moved into one directory.
struct Inotify {
    fd: std::os::fd::OwnedFd,
}

impl Inotify {
    fn watch(dir: &Path) -> io::Result<Inotify> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned to us.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut c = dir.as_os_str().as_bytes().to_vec();
        c.push(0);
        // SAFETY: `c` is NUL-terminated and outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                c.as_ptr().cast(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inotify { fd })
    }

    /// Waits for an event for at most `timeout`; false on timeout.
    fn wait(&self, timeout: Duration) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(false);
        }
        // Drain the events; the caller retries the connect either way.
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn waits_for_a_socket_renamed_into_place_and_copies_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let tmp = dir.path().join("agent.sock.tmp");
        let tmp2 = tmp.clone();
        let sock2 = sock.clone();
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let l = UnixListener::bind(&tmp2).unwrap();
            std::fs::rename(&tmp2, &sock2).unwrap();
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            c.write_all(&got.iter().rev().copied().collect::<Vec<_>>())
                .unwrap();
        });
        let started = Instant::now();
        let stream = connect_when_listening(&sock, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut out = Vec::new();
        pump(stream, io::Cursor::new(b"hello".to_vec()), &mut out).unwrap();
        assert_eq!(out, b"olleh");
        server.join().unwrap();
    }

    #[test]
    fn gives_up_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let e = connect_when_listening(&dir.path().join("none.sock"), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn parses_its_arguments() {
        let a: Vec<String> = ["relay", "--socket", "/r/a.sock", "--wait-ms", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse(&a).unwrap();
        assert_eq!(p.socket, PathBuf::from("/r/a.sock"));
        assert_eq!(p.wait, Duration::from_millis(5));
        assert!(parse(&a[..1]).is_none());
    }
}
