//! Thin, safe wrappers of the `*at` syscalls the operations are made of.
//! Every path handed to them is either a whole client path resolved by
//! `openat2` inside the root, or a single directory entry name (no `/`).

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `RESOLVE_*` flags of `openat2` (linux/openat2.h).
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// How often `openat2` is retried when the kernel could not rule out a
/// `..` race (EAGAIN) before the error is returned.
const EAGAIN_RETRIES: usize = 64;

/// `struct open_how` (linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Converts a NUL-free string (checked by the caller) to a C string.
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Set once the kernel answered ENOSYS to `openat2` (gVisor, kernels
/// before 5.6): from then on the user-space walk of `emulate.rs` is used.
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether to call the kernel's `openat2`. `SANDKASTEN_FSOPS_EMULATE_OPENAT2=1`
/// forces the user-space walk (the test suite runs once that way too).
fn has_openat2() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var_os("SANDKASTEN_FSOPS_EMULATE_OPENAT2").is_some_and(|v| v == "1")
    });
    !forced && !NO_OPENAT2.load(std::sync::atomic::Ordering::Relaxed)
}

/// `openat2(dir, path, {flags | O_CLOEXEC, mode, resolve})`, retried on
/// EINTR and (a bounded number of times) on EAGAIN.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    if !has_openat2() {
        return crate::emulate::openat2(dir, path, flags, mode, resolve);
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u32 as u64,
        mode: u64::from(mode),
        resolve,
    };
    let mut again = 0;
    loop {
        // SAFETY: valid C string and a properly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, std::sync::atomic::Ordering::Relaxed);
                return crate::emulate::openat2(dir, path, flags, mode, resolve);
            }
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if again < EAGAIN_RETRIES => again += 1,
            _ => return Err(e),
        }
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the buffer on success.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by a successful fstat.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: lstat of one entry.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string; fstatat fills the buffer on success.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: initialised by a successful fstatat.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// `renameat(from_dir, from, to_dir, to)`.
pub fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings for the duration of the call.
    check(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
}

/// `unlinkat(dir, name, flags)` (`flags` 0 or `AT_REMOVEDIR`).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// The target of the symlink `fd` was opened on (`O_PATH|O_NOFOLLOW`).
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    // An empty path means the symlink `fd` itself.
    readlink_at(fd, c"")
}

/// The target of symlink `name` in directory `dir`, whatever its length.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the buffer is valid for buf.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        // Possibly cut short: try again with more room.
        buf.resize(buf.len() * 2, 0);
    }
}

/// One entry of a directory: its name and `d_type` (`DT_UNKNOWN` when the
/// filesystem does not say).
pub struct RawEntry {
    pub name: CString,
    pub d_type: u8,
}

/// Reads all entries of the directory `fd` (opened `O_RDONLY|O_DIRECTORY`)
/// except `.` and `..`, with `getdents64` (the fd stays usable for `*at`
/// calls, unlike one handed to `fdopendir`).
pub fn read_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<RawEntry>> {
    // u64 elements: linux_dirent64 records are 8-byte aligned.
    let mut buf = vec![0u64; 4096];
    let mut entries = Vec::new();
    loop {
        // SAFETY: the buffer is valid for its size in bytes.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len() * 8,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(entries);
        }
        // SAFETY: viewing the initialised u64 buffer as bytes.
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut off = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen;
        // u8 d_type; char d_name[]; }
        while off + 19 <= bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[off + 16], bytes[off + 17]]) as usize;
            if reclen == 0 || off + reclen > bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed directory record",
                ));
            }
            let d_type = bytes[off + 18];
            let name = CStr::from_bytes_until_nul(&bytes[off + 19..off + reclen])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unterminated name"))?;
            if name != c"." && name != c".." {
                entries.push(RawEntry {
                    name: name.to_owned(),
                    d_type,
                });
            }
            off += reclen;
        }
    }
}

/// The path that names the very file `fd` is open on (any kind of fd,
/// `O_PATH` included): its magic link in `/proc/self/fd`. The xattr calls
/// take it because before Linux 6.13 they have no form for an `O_PATH`
/// fd; following it (the calls without `l`) reaches exactly that inode,
/// and a thread may always follow its own process's links.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// The names of `path`'s extended attributes (`listxattr`, following the
/// link of [`fd_path`]).
pub fn list_xattrs(path: &CStr) -> io::Result<Vec<CString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: valid C string; the buffer is valid for its length.
        let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| CString::new(n).expect("split at NUL"))
                .collect());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 16 {
            return Err(e);
        }
        // The list grew since it was sized: ask again with more room.
        buf.resize(buf.len() * 4, 0);
    }
}

/// The value of `path`'s extended attribute `name` if it is at most `max`
/// bytes long (`None` when longer): never more is read or allocated.
pub fn get_xattr_max(path: &CStr, name: &CStr, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    // SAFETY: valid C strings; the buffer is valid for its length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), max) };
    if n >= 0 {
        buf.truncate(n as usize);
        return Ok(Some(buf));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ERANGE) {
        return Ok(None);
    }
    Err(e)
}

/// Sets `path`'s extended attribute `name` to `value`.
pub fn set_xattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid C strings; the value is valid for its length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Removes `path`'s extended attribute `name`.
pub fn remove_xattr(path: &CStr, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
}
