//! The sandbox's seccomp filter: checks the architecture (a foreign-arch
//! syscall, and on x86-64 an x32 one, kills the process) and answers EPERM
//! to what a sandbox never needs. The list and the reason for each entry are in
//! `docs/architecture.md` ("Seccomp").

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Syscalls refused outright with EPERM.
pub const DENIED: &[(i64, &str)] = &[
    // Kernel modules and replacing the kernel.
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    // eBPF programs and perf: large kernel attack surface, host-wide data.
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    // Mount API: the sandbox's mounts are fixed at creation.
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    // Joining other namespaces.
    (libc::SYS_setns, "setns"),
    // Kernel keyrings are not namespaced.
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    // userfaultfd is a classic exploitation primitive.
    (libc::SYS_userfaultfd, "userfaultfd"),
    // io_uring bypasses seccomp for the operations it performs.
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    // Host-wide state: accounting, swap, reboot, clocks, kernel log, quotas.
    (libc::SYS_acct, "acct"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_adjtimex, "adjtimex"),
    (libc::SYS_syslog, "syslog"),
    (libc::SYS_quotactl, "quotactl"),
    // File handles bypass path-based isolation (the "shocker" escape).
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_name_to_handle_at, "name_to_handle_at"),
    // Raw port I/O and obsolete interfaces.
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_uselib, "uselib"),
    (libc::SYS__sysctl, "_sysctl"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    (libc::SYS_fanotify_init, "fanotify_init"),
];

/// btrfs subvolume and snapshot ioctls (`_IOW(0x94, nr, 4096)`): a
/// workspace is a btrfs subvolume, and subvolumes made inside it would
/// escape snapshots and block deleting it.
pub const BTRFS_SUBVOLUME_IOCTLS: &[(u64, &str)] = &[
    (btrfs_iow(1), "BTRFS_IOC_SNAP_CREATE"),
    (btrfs_iow(14), "BTRFS_IOC_SUBVOL_CREATE"),
    (btrfs_iow(15), "BTRFS_IOC_SNAP_DESTROY"),
    (btrfs_iow(23), "BTRFS_IOC_SNAP_CREATE_V2"),
    (btrfs_iow(24), "BTRFS_IOC_SUBVOL_CREATE_V2"),
    (btrfs_iow(63), "BTRFS_IOC_SNAP_DESTROY_V2"),
];

const fn btrfs_iow(nr: u64) -> u64 {
    (1u64 << 30) | (4096u64 << 16) | (0x94u64 << 8) | nr
}

/// Socket families a sandbox may open; any other gets EAFNOSUPPORT.
pub const ALLOWED_SOCKET_FAMILIES: &[(i32, &str)] = &[
    (libc::AF_UNIX, "AF_UNIX"),
    (libc::AF_INET, "AF_INET"),
    (libc::AF_INET6, "AF_INET6"),
    (libc::AF_NETLINK, "AF_NETLINK"),
];

/// Netlink protocols a sandbox may open; any other gets EPROTONOSUPPORT
/// (what the kernel answers for a protocol it does not have).
pub const ALLOWED_NETLINK_PROTOCOLS: &[(i32, &str)] = &[
    // Links, addresses, routes of the sandbox's own network namespace
    // (`ip`, glibc's getifaddrs).
    (libc::NETLINK_ROUTE, "NETLINK_ROUTE"),
    // Socket listings of the own network namespace (`ss`).
    (libc::NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG"),
];

/// Namespace-creating flags refused in `clone` and `unshare`.
pub const NAMESPACE_FLAGS: &[(u64, &str)] = &[
    (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
    (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
    (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
    (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
    (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
    (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
    (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
    (libc::CLONE_NEWTIME as u64, "CLONE_NEWTIME"),
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    {
        TargetArch::x86_64
    }
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
}

fn flag_rules() -> Result<Vec<SeccompRule>, String> {
    NAMESPACE_FLAGS
        .iter()
        .map(|(flag, _)| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*flag),
                *flag,
            )
            .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect()
}

/// On x86-64 the x32 ABI shares the architecture value and marks its
/// calls with bit 30 of the number: a deny rule for `keyctl` (250) does not
/// match x32's `keyctl` (0x4000_00fa), and a kernel built with x32 would
/// run it. This program kills the process on any x32 call (seccompiler's
/// filters only check the architecture, which x32 passes).
#[cfg(target_arch = "x86_64")]
fn x32_kill() -> BpfProgram {
    use seccompiler::sock_filter;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.nr is at offset 0.
        insn(LD_W_ABS, 0, 0, 0),
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

/// Builds the filters: EPERM for the deny list and namespace flags,
/// EAFNOSUPPORT for socket families outside the allowed set,
/// EPROTONOSUPPORT for netlink protocols outside theirs, ENOSYS for
/// `clone3` (its flags live in memory seccomp cannot inspect;
/// libc falls back to `clone`, whose flags the first filter checks), and
/// on x86-64 death for x32 calls (after the architecture check of the
/// others, which kills any other ABI).
pub fn filters() -> Result<Vec<BpfProgram>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(nr, _)| (*nr, vec![])).collect();
    rules.insert(
        libc::SYS_ioctl,
        BTRFS_SUBVOLUME_IOCTLS
            .iter()
            .map(|(cmd, _)| {
                let cond =
                    SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *cmd)
                        .map_err(|e| e.to_string())?;
                SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?,
    );
    rules.insert(libc::SYS_clone, flag_rules()?);
    rules.insert(libc::SYS_unshare, flag_rules()?);
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    // Only the socket families a sandbox needs: AF_VSOCK, for one, would
    // reach past the network namespace to the hypervisor's port space.
    let other_family = || -> Result<SeccompRule, String> {
        let conds = ALLOWED_SOCKET_FAMILIES
            .iter()
            .map(|(af, _)| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *af as u64)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        SeccompRule::new(conds).map_err(|e| e.to_string())
    };
    let sockets: BTreeMap<i64, Vec<SeccompRule>> = [
        (libc::SYS_socket, vec![other_family()?]),
        (libc::SYS_socketpair, vec![other_family()?]),
    ]
    .into_iter()
    .collect();
    let eafnosupport = SeccompFilter::new(
        sockets,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    // Netlink: only the protocols of the own network namespace's links and
    // sockets. The others reach host-wide state or large parsers: device
    // events (KOBJECT_UEVENT, delivered to a network namespace of the
    // initial user namespace, i.e. docker's), audit, xfrm, netfilter,
    // crypto, connector.
    let other_netlink = {
        let mut conds = vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_NETLINK as u64,
        )
        .map_err(|e| e.to_string())?];
        for (proto, _) in ALLOWED_NETLINK_PROTOCOLS {
            conds.push(
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *proto as u64)
                    .map_err(|e| e.to_string())?,
            );
        }
        SeccompRule::new(conds).map_err(|e| e.to_string())?
    };
    let netlink: BTreeMap<i64, Vec<SeccompRule>> = [(libc::SYS_socket, vec![other_netlink])]
        .into_iter()
        .collect();
    let eprotonosupport = SeccompFilter::new(
        netlink,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPROTONOSUPPORT as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    let clone3: BTreeMap<i64, Vec<SeccompRule>> =
        [(libc::SYS_clone3, vec![])].into_iter().collect();
    let enosys = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    #[allow(unused_mut)]
    let mut programs = vec![
        BpfProgram::try_from(eperm).map_err(|e| e.to_string())?,
        BpfProgram::try_from(eafnosupport).map_err(|e| e.to_string())?,
        BpfProgram::try_from(eprotonosupport).map_err(|e| e.to_string())?,
        BpfProgram::try_from(enosys).map_err(|e| e.to_string())?,
    ];
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_kill());
    Ok(programs)
}

/// Sets no_new_privs and installs the filters on the calling process.
pub fn install() -> Result<(), String> {
    for f in filters()? {
        seccompiler::apply_filter(&f).map_err(|e| format!("installing seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = filters().unwrap();
        let expected = if cfg!(target_arch = "x86_64") { 5 } else { 4 };
        assert_eq!(f.len(), expected);
        assert!(f.iter().all(|p| !p.is_empty()));
    }
}
