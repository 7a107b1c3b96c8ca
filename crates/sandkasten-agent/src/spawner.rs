//! `sandkasten-agent spawner`: forks the launchers of new sandboxes (see
//! `init/`).
//!
//! The daemon holds a descriptor for every live sandbox, and a process it
//! spawns pays for its descriptor table twice (the copy at `clone`, the
//! close-on-exec sweep at `execve`), so spawning the launcher from the
//! daemon grew with the number of live sandboxes. This process, started
//! once with three descriptors, forks each launcher instead: the fork of a
//! small single-threaded process costs the same whatever runs on the host,
//! and the launcher needs no `execve` at all.
//!
//! stdin is a `SOCK_SEQPACKET` socket to the daemon. Each request is one
//! message: a [`SpawnRequest`] (JSON) with the launcher's stdin, stdout and
//! stderr attached (`SCM_RIGHTS`). The answer is one message: the
//! launcher's pid (decimal) with a pidfd attached, or `error: ...` without.
//! The kernel reaps the launchers (`SIGCHLD` ignored); the daemon learns
//! the outcome from the launcher's stdout. The spawner exits when the
//! daemon's end closes.
//!
//! [`SpawnRequest`]: sandkasten_protocol::SpawnRequest

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use sandkasten_protocol::SpawnRequest;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::process::ExitCode;

const SOCK: RawFd = 0;

pub fn run() -> ExitCode {
    // SAFETY: setting a signal disposition; this process has one thread.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg =
                match recvmsg::<()>(SOCK, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return ExitCode::from(1),
                };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(f) = c {
                        fds.extend(f);
                    }
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 && fds.is_empty() {
            // The daemon is gone.
            return ExitCode::SUCCESS;
        }
        let answer = serde_json::from_slice::<SpawnRequest>(&buf[..n])
            .map_err(|e| format!("invalid request: {e}"))
            .and_then(|req| {
                if fds.len() == 3 {
                    fork_launcher(&req, [fds[0], fds[1], fds[2]])
                } else {
                    Err(format!("expected 3 descriptors, got {}", fds.len()))
                }
            });
        for fd in fds {
            // SAFETY: descriptors received above, ours to close.
            unsafe { libc::close(fd) };
        }
        let sent = match answer {
            Ok((pid, pidfd)) => {
                let fds = [pidfd];
                let r = sendmsg::<()>(
                    SOCK,
                    &[IoSlice::new(pid.to_string().as_bytes())],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                );
                // SAFETY: our pidfd, sent or not.
                unsafe { libc::close(pidfd) };
                r
            }
            Err(e) => sendmsg::<()>(
                SOCK,
                &[IoSlice::new(format!("error: {e}").as_bytes())],
                &[],
                MsgFlags::empty(),
                None,
            ),
        };
        if sent.is_err() {
            return ExitCode::from(1);
        }
    }
}

/// Forks a launcher with `stdio` as its fds 0-2; returns its pid and a
/// pidfd.
fn fork_launcher(req: &SpawnRequest, stdio: [RawFd; 3]) -> Result<(i32, RawFd), String> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: a raw clone without a new stack behaves like fork() and
    // stores a pidfd of the child in `pidfd`; this process is
    // single-threaded, so the child may run arbitrary code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong,
            0,
            &mut pidfd as *mut libc::c_int,
            0,
            0,
        )
    } as i32;
    if pid < 0 {
        return Err(crate::init::os_err("fork of a launcher"));
    }
    if pid == 0 {
        // SAFETY: in the child: restore SIGCHLD (the launcher waits for
        // its own child on failure), put stdio in place; the launcher
        // closes every other descriptor first thing.
        unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            for (i, fd) in stdio.iter().enumerate() {
                if libc::dup2(*fd, i as RawFd) < 0 {
                    libc::_exit(1);
                }
            }
        }
        retitle_as_init();
        let code = crate::init::run(req);
        std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 });
    }
    Ok((pid, pidfd))
}

/// Makes this process's command line `sandkasten-agent init` (and so the sandbox's PID 1, which shares it): the
/// name operators and tools look for. The argument area
/// (`sandkasten-agent\0spawner\0`) is rewritten in place and the rest
/// zeroed; readers of `/proc/PID/cmdline` drop trailing empty arguments
/// (moving its end would need `CAP_SYS_RESOURCE`, which hosts may lack).
fn retitle_as_init() {
    const TITLE: &[u8] = b"sandkasten-agent\0init\0";
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields 48 and 49 (arg_start, arg_end), counted after the command
    // name, which may contain spaces.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return;
    };
    let mut fields = rest.split_whitespace().skip(45);
    let (Some(Ok(start)), Some(Ok(end))) = (
        fields.next().map(str::parse::<usize>),
        fields.next().map(str::parse::<usize>),
    ) else {
        return;
    };
    if end < start + TITLE.len() {
        return;
    }
    // SAFETY: [start, end) is this process's own argument area, mapped
    // and writable (the initial stack); nothing else runs in this process.
    unsafe {
        std::ptr::copy_nonoverlapping(TITLE.as_ptr(), start as *mut u8, TITLE.len());
        std::ptr::write_bytes(
            (start + TITLE.len()) as *mut u8,
            0,
            end - start - TITLE.len(),
        );
    }
}
