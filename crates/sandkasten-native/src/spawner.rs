//! Starting launchers through `sandkasten-agent spawner` (see the agent's
//! `spawner.rs`): a small process started once, which forks each launcher.
//! A process the daemon spawned itself would copy the daemon's descriptor
//! table (one descriptor per live sandbox) and sweep it at `execve`, so
//! that cost grew with the live sandboxes; a fork of the spawner does not,
//! and needs no `execve`.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use sandkasten_protocol::SpawnRequest;
use sandkasten_runtime::RuntimeError;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

pub(crate) struct Spawner {
    agent: PathBuf,
    conn: Mutex<Option<Conn>>,
}

/// A running spawner: our end of its socket and the process.
struct Conn {
    sock: OwnedFd,
    child: Child,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing our end ends it.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A launcher being started: a pidfd to kill it by, and the daemon's ends
/// of its stdin, stdout and stderr. Dropped before
/// [`Launcher::finished`], it is killed (a cancelled create).
pub(crate) struct Launcher {
    pidfd: Option<OwnedFd>,
    pub stdin: Option<std::fs::File>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl Launcher {
    /// Sends SIGKILL (a no-op once it has exited).
    pub fn kill(&mut self) {
        if let Some(fd) = self.pidfd.take() {
            // SAFETY: pidfd_send_signal on a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            };
        }
    }

    /// It has reported: nothing to kill when dropped.
    pub fn finished(&mut self) {
        self.pidfd = None;
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| RuntimeError::io("creating a pipe", std::io::Error::from(e)))
}

impl Spawner {
    /// Starts the spawner now, so that a host where it cannot run fails
    /// at start rather than at the first create.
    pub(crate) fn start(agent: &Path) -> Result<Spawner, RuntimeError> {
        let conn = Conn::start(agent)?;
        Ok(Spawner {
            agent: agent.to_path_buf(),
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Forks a launcher (blocking, a fraction of a millisecond). A spawner
    /// that died is replaced once.
    pub(crate) fn spawn(&self, req: &SpawnRequest) -> Result<Launcher, RuntimeError> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let theirs = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let body = serde_json::to_vec(req)
            .map_err(|e| RuntimeError::StartFailed(format!("encoding a spawn request: {e}")))?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = String::new();
        for _ in 0..2 {
            if conn.is_none() {
                *conn = Some(Conn::start(&self.agent)?);
            }
            let c = conn.as_ref().expect("just started");
            match c.request(&body, &theirs) {
                Ok(Answer::Started(pidfd)) => {
                    return Ok(Launcher {
                        pidfd: Some(pidfd),
                        stdin: Some(in_w.into()),
                        stdout: Some(out_r),
                        stderr: Some(err_r),
                    })
                }
                Ok(Answer::Refused(why)) => {
                    return Err(RuntimeError::StartFailed(format!(
                        "starting a launcher: {why}"
                    )))
                }
                Err(why) => {
                    tracing::warn!("the launcher spawner failed ({why}); starting a new one");
                    last = why;
                    *conn = None;
                }
            }
        }
        Err(RuntimeError::StartFailed(format!(
            "the launcher spawner does not answer: {last}"
        )))
    }
}

enum Answer {
    Started(OwnedFd),
    Refused(String),
}

impl Conn {
    fn start(agent: &Path) -> Result<Conn, RuntimeError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| RuntimeError::io("creating the spawner's socket", std::io::Error::from(e)))?;
        let child = Command::new(agent)
            .arg0("sandkasten-agent")
            .arg("spawner")
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(RuntimeError::io_ctx(format!(
                "starting the launcher spawner {}",
                agent.display()
            )))?;
        Ok(Conn { sock: ours, child })
    }

    /// One request and its answer; `Err` when the spawner is gone.
    fn request(&self, body: &[u8], fds: &[RawFd; 3]) -> Result<Answer, String> {
        let sock = self.sock.as_fd().as_raw_fd();
        sendmsg::<()>(
            sock,
            &[IoSlice::new(body)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| format!("sending: {e}"))?;
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(|e| format!("receiving: {e}"))?,
            }
        };
        let mut pidfd = None;
        for c in msg.cmsgs().map_err(|e| format!("receiving: {e}"))? {
            if let ControlMessageOwned::ScmRights(f) = c {
                for fd in f {
                    // SAFETY: a descriptor just received, ours alone.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    pidfd.get_or_insert(fd);
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err("it closed its socket".into());
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        match (text.parse::<i32>(), pidfd) {
            (Ok(_pid), Some(fd)) => Ok(Answer::Started(fd)),
            _ => Ok(Answer::Refused(
                text.strip_prefix("error: ").unwrap_or(&text).to_string(),
            )),
        }
    }
}
