//! Capabilities of the sandbox init. It keeps only what it needs to start
//! the shell as the sandbox user and to signal it; the bounding set loses
//! everything else, so nothing started inside can ever regain it.

use super::os_err;

/// Capabilities the agent keeps (numbers from linux/capability.h).
const KEEP: &[u32] = &[
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    5, // CAP_KILL
    6, // CAP_SETGID
    7, // CAP_SETUID
];

/// Drops every capability not in [`KEEP`] from the bounding set.
pub fn drop_bounding_set() -> Result<(), String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if KEEP.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(os_err(format!("dropping capability {cap}")));
        }
    }
    // Drop them from the permitted/effective/inheritable sets too.
    set_capabilities(KEEP.iter().fold(0, |m, c| m | (1u64 << c)))
}

/// Sets the effective and permitted capabilities of the calling thread to
/// `mask` (bit n = capability n) and the inheritable ones to none.
pub fn set_capabilities(mask: u64) -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let lo = mask as u32;
    let hi = (mask >> 32) as u32;
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a v3 header and two data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) } != 0 {
        return Err(os_err("capset"));
    }
    Ok(())
}
