//! Small fd and string helpers the shell and the processes share.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens a pty pair, both ends close-on-exec, with the terminal settings
/// the kernel gives a new one.
pub fn open_pty_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain syscalls; every returned fd is wrapped at once.
    unsafe {
        let m = libc::open(c"/dev/ptmx".as_ptr(), flags);
        if m < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "opening /dev/ptmx",
            ));
        }
        let master = OwnedFd::from_raw_fd(m);
        let unlock: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK as _, &unlock) < 0 {
            return Err(with_context(
                io::Error::last_os_error(),
                "unlocking the pty",
            ));
        }
        // TIOCGPTPEER (Linux 4.13) opens the slave without a path lookup,
        // which also works where /dev/pts is not the pty's devpts.
        let mut s = libc::ioctl(m, libc::TIOCGPTPEER as _, flags);
        if s < 0 {
            let mut n: libc::c_uint = 0;
            if libc::ioctl(m, libc::TIOCGPTN as _, &mut n) < 0 {
                return Err(with_context(io::Error::last_os_error(), "TIOCGPTN"));
            }
            let path = cstring(&format!("/dev/pts/{n}"))?;
            s = libc::open(path.as_ptr(), flags);
            if s < 0 {
                return Err(with_context(
                    io::Error::last_os_error(),
                    "opening the pty slave",
                ));
            }
        }
        let slave = OwnedFd::from_raw_fd(s);
        Ok((master, slave))
    }
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is wrapped at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: valid out array; the fds are wrapped at once.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a valid fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves `fd` to a close-on-exec fd numbered `min` or higher, closing the
/// original.
pub fn move_above(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain fcntl; the new fd is wrapped at once.
    unsafe {
        let n = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(n))
    }
}

/// Grows this process's descriptor table to hold descriptor `min`. Done
/// while the process is single-threaded it is cheap: growing a table that
/// threads share waits for an RCU grace period (12-15 ms on a quiet host),
/// which the shell's `move_above(_, 100)` paid on the first exec.
pub fn grow_fd_table(min: RawFd) {
    // SAFETY: plain fcntl on fd 0 or a fresh fd, the copy closed at once.
    unsafe {
        let probe = libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        if probe < 0 {
            return;
        }
        let n = libc::fcntl(probe, libc::F_DUPFD_CLOEXEC, min);
        if n >= 0 {
            libc::close(n);
        }
        libc::close(probe);
    }
}

pub fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub fn is_executable(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid C string.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("NUL byte in {s:?}")))
}

pub fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// In a forked child: undoes the agent's signal state (Rust's runtime
/// ignores SIGPIPE, for one), so it does not leak into what is started.
///
/// # Safety
/// Only in a forked child before exec: async-signal-safe calls only.
pub unsafe fn reset_signals() {
    // SAFETY: plain async-signal-safe calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Closes every descriptor above 2 but those in `keep` (in any order).
/// Async-signal-safe (no allocation): for forked children and the sandbox
/// init, which never exec or must not hold the agent's descriptors while
/// another process of the sandbox could take them.
pub fn close_fds_except(keep: &[libc::c_int]) {
    let mut from: libc::c_int = 3;
    loop {
        // The lowest kept descriptor at or above `from`.
        let next = keep.iter().copied().filter(|&k| k >= from).min();
        let end = next.map_or(u32::MAX, |k| (k as u32).wrapping_sub(1));
        if next != Some(from) {
            // SAFETY: closing descriptors the caller does not keep.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, end, 0u32) };
        }
        match next {
            Some(k) => from = k + 1,
            None => return,
        }
    }
}

/// In a forked child: umask, OOM score, RLIMIT_NPROC, then the switch to
/// `uid`/`gid` (`None`: kept). `false` on a failure, errno set.
///
/// # Safety
/// Only in a forked child before exec: async-signal-safe calls only.
pub unsafe fn become_user(uid: Option<u32>, gid: Option<u32>, nproc: Option<u64>) -> bool {
    // SAFETY: plain async-signal-safe calls.
    unsafe {
        libc::umask(0o022);
        // The shell and everything it starts are the OOM killer's first
        // choice (+500), so a memory hog dies rather than the agent (PID 1,
        // at 0, whose floor of 0 they inherit: they may lower their score
        // back to 0, never below). Raising a score needs no privilege.
        // The agent is not dumpable, so neither is this child, and its
        // /proc files are out of reach: dumpable just for the write, then
        // not again until exec (which decides it anew). A dumpable child
        // before exec still holds the agent's descriptors (close-on-exec
        // only at exec), and a process of the sandbox's root could take
        // them (ptrace, pidfd_getfd).
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        let oom = c"/proc/self/oom_score_adj";
        let fd = libc::open(oom.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if fd >= 0 {
            libc::write(fd, b"500".as_ptr().cast(), 3);
            libc::close(fd);
        }
        if let Some(n) = nproc {
            // Counted per user by the sandbox's kernel; set before the
            // switch to the sandbox user, who cannot raise it.
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) < 0 {
                return false;
            }
        }
        if uid.is_some() || gid.is_some() {
            // EPERM: a user namespace whose setgroups is denied; then the
            // groups cannot be anything but what they are.
            if libc::setgroups(0, std::ptr::null()) < 0 && *libc::__errno_location() != libc::EPERM
            {
                return false;
            }
        }
        if let Some(gid) = gid {
            if libc::setgid(gid) < 0 {
                return false;
            }
        }
        if let Some(uid) = uid {
            if libc::setuid(uid) < 0 {
                return false;
            }
        }
    }
    true
}

/// A NULL-terminated array of pointers to `strings` (an argv or envp for
/// `execve`), built before a fork: the child may not allocate.
pub fn c_ptrs(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Reads the error pipe of a child forked to exec: a successful exec
/// closes it (`None`), a failure writes its errno first (`Some`).
pub fn child_exec_error(err_r: OwnedFd) -> io::Result<Option<io::Error>> {
    use std::io::Read;
    let mut errno = [0u8; 4];
    let mut err_r = std::fs::File::from(err_r);
    let mut got = 0;
    while got < 4 {
        match err_r.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((got == 4).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(errno))))
}
