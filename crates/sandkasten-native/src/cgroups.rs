//! Per-session cgroups on v2 where its controllers are enabled, on v1
//! hierarchies otherwise (each controller decided on its own, so hybrid
//! hosts work). Groups live at `<hierarchy>/sandkasten/<session_id>`.

use sandkasten_protocol::CgroupJoin;
use sandkasten_runtime::{Limits, RuntimeError, SandboxStats};
use std::path::{Path, PathBuf};

/// Where one controller lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// The root of a cgroup2 mount with the controller available.
    V2(PathBuf),
    /// The mount point of the v1 hierarchy carrying the controller.
    V1(PathBuf),
}

impl Hierarchy {
    fn root(&self) -> &Path {
        match self {
            Hierarchy::V2(p) | Hierarchy::V1(p) => p,
        }
    }
    fn group(&self, id: &str) -> PathBuf {
        self.root().join(PARENT).join(id)
    }
}

const PARENT: &str = "sandkasten";

/// The host's cgroup layout for the controllers we use.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub memory: Hierarchy,
    pub pids: Hierarchy,
    pub cpu: Hierarchy,
    /// CPU usage accounting: `cpu` itself on v2, `cpuacct` on v1.
    pub cpuacct: Hierarchy,
    /// Freezing (pause): `cgroup.freeze` of the memory group on v2, the
    /// `freezer` controller on v1; `None` on a v1 host without it.
    pub freezer: Option<Hierarchy>,
}

struct CgroupMount {
    fstype: String,
    mount_point: PathBuf,
    super_options: String,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let super_options = r.next().unwrap_or("");
            (fstype == "cgroup" || fstype == "cgroup2").then(|| CgroupMount {
                fstype: fstype.to_string(),
                mount_point: PathBuf::from(mount_point.replace("\\040", " ")),
                super_options: super_options.to_string(),
            })
        })
        .collect()
}

/// Where the named, controller-less v1 hierarchy that turns on
/// `favordynmods` is mounted (see [`favor_dynmods`]).
pub const FAVOR_DYNMODS_MOUNT: &str = "/run/sandkasten/cgroup-favordynmods";

/// How moving a process into a cgroup goes on this host: `Ok(how)` when
/// it does not wait for an RCU grace period, `Err(why)` when it does.
///
/// Writing `cgroup.procs` takes the kernel's global cgroup threadgroup
/// lock for writing, which waits for a grace period (12-25 ms here) unless
/// some hierarchy is mounted with `favordynmods` (cgroup v1 and v2 share
/// that lock). With `enable`, where no hierarchy has it yet, a named v1
/// hierarchy without controllers is mounted with it at
/// [`FAVOR_DYNMODS_MOUNT`] and left there (other daemons reuse it). Its
/// effect is host-wide while it is mounted: forks and exits take the
/// lock's slower path. Kernels without the option, or hosts that cannot
/// mount a v1 hierarchy, stay on the slow path.
pub fn favor_dynmods(enable: bool) -> Result<String, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(m) = cgroup_mounts(&mountinfo)
        .into_iter()
        .find(|m| m.super_options.split(',').any(|o| o == "favordynmods"))
    {
        return Ok(format!(
            "favordynmods on the {} mount at {}",
            m.fstype,
            m.mount_point.display()
        ));
    }
    if !enable {
        return Err("no cgroup mount has favordynmods (cgroup_favordynmods: false)".into());
    }
    std::fs::create_dir_all(FAVOR_DYNMODS_MOUNT)
        .map_err(|e| format!("creating {FAVOR_DYNMODS_MOUNT}: {e}"))?;
    let target = std::ffi::CString::new(FAVOR_DYNMODS_MOUNT).expect("no NUL");
    // SAFETY: mount(2) with valid C strings; the data string is a plain
    // option list.
    let rc = unsafe {
        libc::mount(
            c"cgroup".as_ptr(),
            target.as_ptr(),
            c"cgroup".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"none,name=sandkasten-favordynmods,favordynmods"
                .as_ptr()
                .cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(FAVOR_DYNMODS_MOUNT);
        return Err(format!(
            "mounting a cgroup v1 hierarchy with favordynmods at {FAVOR_DYNMODS_MOUNT}: {e}"
        ));
    }
    Ok(format!(
        "favordynmods on a named cgroup v1 hierarchy mounted at {FAVOR_DYNMODS_MOUNT}"
    ))
}

impl Cgroups {
    /// Detects the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Cgroups, RuntimeError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| RuntimeError::io("reading /proc/self/mountinfo", e))?;
        Self::from_mountinfo(&mountinfo, |p| std::fs::read_to_string(p).ok())
    }

    fn from_mountinfo(
        mountinfo: &str,
        read: impl Fn(&Path) -> Option<String>,
    ) -> Result<Cgroups, RuntimeError> {
        let mounts = cgroup_mounts(mountinfo);
        let find = |controller: &str, v1_name: &str| -> Option<Hierarchy> {
            for m in mounts.iter().filter(|m| m.fstype == "cgroup2") {
                let ctl = read(&m.mount_point.join("cgroup.controllers")).unwrap_or_default();
                if ctl.split_whitespace().any(|c| c == controller) {
                    return Some(Hierarchy::V2(m.mount_point.clone()));
                }
            }
            mounts
                .iter()
                .filter(|m| m.fstype == "cgroup")
                .find(|m| m.super_options.split(',').any(|o| o == v1_name))
                .map(|m| Hierarchy::V1(m.mount_point.clone()))
        };
        let missing = |c: &str| {
            RuntimeError::HostNotReady(format!(
                "no cgroup hierarchy carries the {c} controller (neither cgroup v2 nor v1); \
                 mount cgroups (e.g. systemd does) and retry"
            ))
        };
        let memory = find("memory", "memory").ok_or_else(|| missing("memory"))?;
        let pids = find("pids", "pids").ok_or_else(|| missing("pids"))?;
        let cpu = find("cpu", "cpu").ok_or_else(|| missing("cpu"))?;
        let cpuacct = match &cpu {
            Hierarchy::V2(_) => cpu.clone(),
            Hierarchy::V1(_) => find("cpu", "cpuacct").ok_or_else(|| missing("cpuacct"))?,
        };
        // v2 freezes any group (`cgroup.freeze`, not a controller).
        let freezer = match &memory {
            Hierarchy::V2(_) => Some(memory.clone()),
            Hierarchy::V1(_) => mounts
                .iter()
                .filter(|m| m.fstype == "cgroup")
                .find(|m| m.super_options.split(',').any(|o| o == "freezer"))
                .map(|m| Hierarchy::V1(m.mount_point.clone())),
        };
        Ok(Cgroups {
            memory,
            pids,
            cpu,
            cpuacct,
            freezer,
        })
    }

    fn hierarchies(&self) -> Vec<&Hierarchy> {
        let mut out: Vec<&Hierarchy> = Vec::new();
        for h in [&self.memory, &self.pids, &self.cpu, &self.cpuacct]
            .into_iter()
            .chain(self.freezer.as_ref())
        {
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }

    /// Creates the session's groups with their memory and pids limits;
    /// returns what the launcher does before the sandbox init exists: the
    /// CPU quota's write (it walks every CPU cgroup on the host, so its
    /// cost grows with the live sandboxes: done there, it overlaps the
    /// rootfs assembly) and the `cgroup.procs` files to join.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<CgroupJoin, RuntimeError> {
        for h in self.hierarchies() {
            if let Hierarchy::V2(root) = h {
                // Delegate the controllers down to our groups.
                for dir in [root.clone(), root.join(PARENT)] {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
                    let _ =
                        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu");
                }
            }
            let g = h.group(id);
            std::fs::create_dir_all(&g)
                .map_err(|e| RuntimeError::io(format!("creating cgroup {}", g.display()), e))?;
        }
        let mem = limits.memory_mb * 1024 * 1024;
        let set = |h: &Hierarchy, file: &str, value: String| -> Result<(), RuntimeError> {
            let p = h.group(id).join(file);
            std::fs::write(&p, &value)
                .map_err(|e| RuntimeError::io(format!("writing {value} to {}", p.display()), e))
        };
        match &self.memory {
            Hierarchy::V2(_) => {
                set(&self.memory, "memory.max", mem.to_string())?;
                if self.memory.group(id).join("memory.swap.max").exists() {
                    set(&self.memory, "memory.swap.max", "0".into())?;
                }
            }
            Hierarchy::V1(_) => {
                set(&self.memory, "memory.limit_in_bytes", mem.to_string())?;
                if self
                    .memory
                    .group(id)
                    .join("memory.memsw.limit_in_bytes")
                    .exists()
                {
                    set(&self.memory, "memory.memsw.limit_in_bytes", mem.to_string())?;
                }
            }
        }
        set(&self.pids, "pids.max", limits.pids.to_string())?;
        // The kernel's default period (100 ms) on v1, so only the quota is
        // written there: each write is a walk of the hierarchy.
        let period = 100_000u64;
        let quota = ((limits.cpu * period as f64) as u64).max(1000);
        let cpu = match &self.cpu {
            Hierarchy::V2(_) => ("cpu.max", format!("{quota} {period}")),
            Hierarchy::V1(_) => ("cpu.cfs_quota_us", quota.to_string()),
        };
        Ok(CgroupJoin {
            writes: vec![(self.cpu.group(id).join(cpu.0), cpu.1)],
            procs: self
                .hierarchies()
                .into_iter()
                .map(|h| h.group(id).join("cgroup.procs"))
                .collect(),
        })
    }

    /// Pids currently in the session's groups.
    pub fn procs(&self, id: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for h in self.hierarchies() {
            if let Ok(s) = std::fs::read_to_string(h.group(id).join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Removes the session's groups. They must be empty; the kernel may
    /// take a moment to release exited tasks, so EBUSY is retried briefly
    /// (v1 has no event for it). Blocking: call it on the blocking pool.
    pub fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.release_charges(id);
        for h in self.hierarchies() {
            let g = h.group(id);
            let mut delay = std::time::Duration::from_millis(1);
            let mut waited = std::time::Duration::ZERO;
            loop {
                match std::fs::remove_dir(&g) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && waited < std::time::Duration::from_secs(5) =>
                    {
                        // Kill stragglers that are provably in this group.
                        for pid in self.procs(id) {
                            // SAFETY: signalling a pid read from our own session's cgroup.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                        std::thread::sleep(delay);
                        waited += delay;
                        delay = (delay * 2).min(std::time::Duration::from_millis(50));
                    }
                    Err(e) => {
                        return Err(RuntimeError::io(
                            format!("removing cgroup {}", g.display()),
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Reclaims what is still charged to the session's memory group, its
    /// processes gone. Page cache of files the sandbox was the first to
    /// read (an image's files, a persistent workspace's) stays charged to
    /// a removed group and keeps it in the kernel, offline, with its share
    /// of the per-cgroup tables (`shrinker_info` grows with every
    /// superblock on the host), until memory pressure reclaims that cache:
    /// a daemon that creates and destroys sandboxes all day would pile up
    /// thousands. The cost: those clean pages leave the page cache, and
    /// the next reader reads them again. Best effort: a failure leaves the
    /// group to the kernel as before.
    fn release_charges(&self, id: &str) {
        let g = self.memory.group(id);
        // Page cache left: `cache` on v1 (shmem too, gone with the
        // sandbox's tmpfs), `file` on v2. Mostly none once the sandbox's
        // own files are deleted, and reclaiming costs a drain of every
        // CPU's page lists (milliseconds), so only when there is some.
        let key = match &self.memory {
            Hierarchy::V1(_) => "cache",
            Hierarchy::V2(_) => "file",
        };
        let cached = std::fs::read_to_string(g.join("memory.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        tracing::debug!(session = %id, cached, "page cache charged at removal");
        if cached == 0 {
            return;
        }
        let r = match &self.memory {
            Hierarchy::V1(_) => std::fs::write(g.join("memory.force_empty"), "0"),
            Hierarchy::V2(_) => std::fs::write(g.join("memory.reclaim"), cached.to_string()),
        };
        match r {
            Ok(()) => {}
            // Gone already, or (v2) not all of it reclaimable.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EAGAIN)) => {}
            Err(e) => tracing::debug!(session = %id, "reclaiming the memory cgroup: {e}"),
        }
    }

    /// Freezes (`true`) or thaws the session's processes and waits until
    /// the kernel reports it done. Blocking: call it on the blocking pool.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        let Some(h) = &self.freezer else {
            return Err(RuntimeError::Unsupported(
                "pause (no cgroup freezer on this host: cgroup v2, or the v1 freezer controller)"
                    .into(),
                "native",
            ));
        };
        let g = h.group(id);
        let (file, value, state_file, done) = match h {
            Hierarchy::V2(_) => (
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
                if frozen { "frozen 1" } else { "frozen 0" },
            ),
            Hierarchy::V1(_) => (
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        let p = g.join(file);
        std::fs::write(&p, value)
            .map_err(|e| RuntimeError::io(format!("writing {value} to {}", p.display()), e))?;
        // The kernel freezes task by task; the state says when all are.
        // (A bounded wait: v1 has no event for it, and the v2 event is a
        // file change this short wait does not need.)
        let mut delay = std::time::Duration::from_micros(50);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(g.join(state_file)).unwrap_or_default();
            if state.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(RuntimeError::Backend {
                    context: format!("freezing {id}"),
                    message: format!("the cgroup did not reach {done:?} within 5 s"),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(std::time::Duration::from_millis(10));
        }
    }

    /// Whether the session's processes are frozen (a pause that survived
    /// a restart of the daemon).
    pub fn is_frozen(&self, id: &str) -> bool {
        let Some(h) = &self.freezer else {
            return false;
        };
        let g = h.group(id);
        match h {
            Hierarchy::V2(_) => {
                std::fs::read_to_string(g.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
            Hierarchy::V1(_) => {
                std::fs::read_to_string(g.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED")
            }
        }
    }

    /// Usage and limits read back from the kernel.
    pub fn stats(&self, id: &str) -> SandboxStats {
        let read = |h: &Hierarchy, f: &str| -> Option<String> {
            std::fs::read_to_string(h.group(id).join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let num = |s: Option<String>| s.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let (memory_bytes, memory_limit) = match &self.memory {
            Hierarchy::V2(_) => (
                num(read(&self.memory, "memory.current")),
                num(read(&self.memory, "memory.max")),
            ),
            Hierarchy::V1(_) => (
                num(read(&self.memory, "memory.usage_in_bytes")),
                num(read(&self.memory, "memory.limit_in_bytes")),
            ),
        };
        let cpu_usage_usec = match &self.cpuacct {
            Hierarchy::V2(_) => read(&self.cpuacct, "cpu.stat")
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("usage_usec ")
                            .and_then(|v| v.trim().parse().ok())
                    })
                })
                .unwrap_or(0),
            Hierarchy::V1(_) => num(read(&self.cpuacct, "cpuacct.usage")) / 1000,
        };
        let pids = num(read(&self.pids, "pids.current"));
        SandboxStats {
            memory_bytes,
            memory_limit,
            cpu_usage_usec,
            pids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_uses_v1_when_v2_has_no_controllers() {
        let c = Cgroups::from_mountinfo(HYBRID, |_| Some(String::new())).unwrap();
        assert_eq!(c.memory, Hierarchy::V1("/sys/fs/cgroup/memory".into()));
        assert_eq!(c.pids, Hierarchy::V1("/sys/fs/cgroup/pids".into()));
        assert_eq!(c.cpu, Hierarchy::V1("/sys/fs/cgroup/cpu".into()));
        assert_eq!(c.cpuacct, Hierarchy::V1("/sys/fs/cgroup/cpuacct".into()));
    }

    #[test]
    fn pure_v2_host_uses_v2() {
        let info = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let c =
            Cgroups::from_mountinfo(info, |_| Some("cpuset cpu io memory pids".into())).unwrap();
        assert_eq!(c.memory, Hierarchy::V2("/sys/fs/cgroup".into()));
        assert_eq!(c.cpuacct, c.cpu);
        assert_eq!(c.hierarchies().len(), 1);
    }

    #[test]
    fn missing_controller_is_a_clear_error() {
        let err = Cgroups::from_mountinfo("", |_| None).unwrap_err();
        assert!(err.to_string().contains("memory controller"), "{err}");
    }
}
