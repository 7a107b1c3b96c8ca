//! Disk limits end to end: a sandbox's own writes outside `/workspace`
//! (home, `/tmp`, `/var/tmp`, the root filesystem) stop at its disk limit,
//! inodes included, and cost the host nothing beyond the preallocated
//! scratch filesystem; a request's `disk_limit_mb` is capped and applied
//! (also to a pooled sandbox when it is claimed); a host whose data dir is
//! full refuses creates with 507 STORAGE_FULL, keeps serving sessions, and
//! recovers by itself when space returns.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Bytes the files below `dir` occupy on its filesystem (allocated
/// blocks; mounts below it are not entered).
fn allocated_below(dir: &Path) -> u64 {
    let dev = std::fs::symlink_metadata(dir).unwrap().dev();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The limit of a session as GET reports it.
fn limit_of(d: &Daemon, id: &str) -> serde_json::Value {
    d.get_session(id).expect(200, "GET the session")["disk_limit_mb"].clone()
}

#[test]
fn a_disk_limit_beyond_the_cap_or_below_one_is_invalid() {
    let d = Daemon::start(Some(
        "defaults:\n  disk_limit_mb: 64\n  max_disk_limit_mb: 1024\n",
    ));
    for (body, says) in [
        (json!({"disk_limit_mb": 0}), "at least 1"),
        (json!({"disk_limit_mb": -3}), "at least 1"),
        (json!({"disk_limit_mb": 1025}), "at most 1024"),
    ] {
        let r = d.try_create_session(body.clone());
        r.assert_error(400, "INVALID_REQUEST", &format!("create with {body}"));
        let message = r.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("disk_limit_mb") && message.contains(says),
            "{body}: the message does not name the field and the bound: {message}"
        );
    }
    for body in [
        json!({"disk_limit_mb": "big"}),
        json!({"disk_limit_mb": 1.5}),
    ] {
        d.try_create_session(body.clone()).assert_error(
            400,
            "INVALID_REQUEST",
            &format!("create with {body}"),
        );
    }
    assert!(d.listed_ids().is_empty(), "a refused create left a session");
    // The cap itself is accepted; where the backend enforces limits it is
    // the session's limit, elsewhere the session reports none.
    let v = d.create_session(json!({"disk_limit_mb": 1024}));
    if on_docker() {
        let (_, driver) = docker_cli(&["info", "--format", "{{.Driver}}"]);
        let enforced = matches!(driver.trim(), "btrfs" | "zfs");
        assert_eq!(
            v["disk_limit_mb"],
            if enforced { json!(1024) } else { json!(null) },
            "driver {driver}: {v}"
        );
    } else {
        assert_eq!(v["disk_limit_mb"], 1024, "{v}");
    }
}

mod native_only {
    use super::*;

    #[test]
    fn writes_past_the_limit_fail_in_home_tmp_and_var_tmp_and_the_host_loses_nothing() {
        require_native("the scratch filesystem's quota groups");
        let d = Daemon::start(Some("defaults:\n  disk_limit_mb: 64\n"));
        let id = d.new_session();
        assert_eq!(limit_of(&d, &id), 64);
        let img = d.data_dir.join("scratch.img");
        let m = std::fs::metadata(&img).expect("the scratch image");
        assert_eq!(m.len(), TEST_SCRATCH_MB << 20);
        assert!(
            m.blocks() * 512 >= m.len(),
            "the scratch image is not preallocated: {} of {} bytes",
            m.blocks() * 512,
            m.len()
        );
        let before = allocated_below(&d.data_dir);
        for target in ["$HOME/big", "/tmp/big", "/var/tmp/big"] {
            let v = d.exec_with(
                &id,
                json!({
                    "cmd": format!("dd if=/dev/zero of={target} bs=1M count=100 2>&1; echo rc=$?; \
                                    du -m {target}"),
                    "timeout_ms": 60000,
                }),
            );
            let v = v.expect(200, "exec of a 100 MB write");
            let out = v["output"].as_str().unwrap();
            assert!(
                out.contains("Disk quota exceeded") && !out.contains("rc=0"),
                "100 MB written to {target} under a 64 MB limit: {out}"
            );
            let mb: u64 = out
                .lines()
                .last()
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no size of {target}: {out}"));
            assert!(mb <= 64, "{target} holds {mb} MB under a 64 MB limit");
            // The host's filesystem holds nothing more than before (the
            // scratch image was preallocated): a little slack for the
            // database's journal.
            let grown = allocated_below(&d.data_dir).saturating_sub(before);
            assert!(
                grown < 8 << 20,
                "the data dir grew by {grown} bytes while writing {target}"
            );
            d.sh(&id, &format!("rm -f {target}"));
        }
        // Space freed inside is usable again.
        assert_eq!(
            d.sh(
                &id,
                "dd if=/dev/zero of=/tmp/again bs=1M count=32 2>/dev/null && du -m /tmp/again | cut -f1"
            ),
            "32\n"
        );
        // The workspace is not the root filesystem, but an ephemeral one is
        // the sandbox's own storage too: under the same limit.
        let v = d.exec(
            &id,
            "dd if=/dev/zero of=/workspace/big bs=1M count=100 2>&1; echo rc=$?",
        );
        let out = v["output"].as_str().unwrap();
        assert!(
            out.contains("Disk quota exceeded"),
            "ephemeral /workspace: {out}"
        );
    }

    #[test]
    fn a_file_flood_stops_at_the_limit_and_the_sandbox_recovers() {
        require_native("the scratch filesystem's quota groups");
        let d = Daemon::start(Some("defaults:\n  disk_limit_mb: 8\n"));
        let id = d.new_session();
        // Empty files until the first failure: each costs an inode and a
        // directory entry (metadata, counted by the quota group).
        let script = r#"mkdir /var/tmp/flood && cd /var/tmp/flood && python3 - <<'EOF'
import os
n = 0
try:
    while n < 5_000_000:
        os.close(os.open(str(n), os.O_CREAT | os.O_WRONLY, 0o644))
        n += 1
except OSError as e:
    print('stopped', n, e.errno)
else:
    print('not stopped', n)
EOF"#;
        let v = d.exec_with(&id, json!({"cmd": script, "timeout_ms": 110000}));
        let v = v.expect(200, "the file flood");
        assert_eq!(v["timed_out"], false, "{v}");
        let out = v["output"].as_str().unwrap().trim().to_string();
        let words: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"stopped"), "{out}");
        let files: u64 = words[1].parse().unwrap();
        assert_eq!(words[2], libc::EDQUOT.to_string(), "not EDQUOT: {out}");
        assert!(
            (1000..1_000_000).contains(&files),
            "{files} files under an 8 MB limit"
        );
        let v = d.exec_with(
            &id,
            json!({"cmd": "rm -rf /var/tmp/flood && touch /tmp/after && echo recovered",
                   "timeout_ms": 110000}),
        );
        assert_eq!(
            v.expect(200, "clean up")["output"],
            "recovered\n",
            "the sandbox did not recover"
        );
    }

    #[test]
    fn a_session_takes_its_own_limit_and_sessions_do_not_share_one() {
        require_native("the scratch filesystem's quota groups");
        let d = Daemon::start(Some("defaults:\n  disk_limit_mb: 64\n"));
        let small = d.create_session(json!({"disk_limit_mb": 16}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let default = d.new_session();
        assert_eq!(limit_of(&d, &small), 16);
        assert_eq!(limit_of(&d, &default), 64);
        let write = |d: &Daemon, id: &str, mb: u32| {
            d.exec(
                id,
                &format!("dd if=/dev/zero of=/tmp/f bs=1M count={mb} 2>&1; echo rc=$?"),
            )["output"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let out = write(&d, &small, 32);
        assert!(out.contains("Disk quota exceeded"), "{out}");
        // Its neighbour's full quota does not limit the other.
        let out = write(&d, &default, 48);
        assert!(out.contains("rc=0"), "{out}");
        // A restarted daemon reports the same limits.
        d.terminate();
        let d = Daemon::start_in(&d.home, Some("defaults:\n  disk_limit_mb: 64\n"));
        assert_eq!(limit_of(&d, &small), 16);
        assert_eq!(limit_of(&d, &default), 64);
        let out = write(&d, &small, 32);
        assert!(
            out.contains("Disk quota exceeded"),
            "after a restart: {out}"
        );
    }

    #[test]
    fn a_pooled_sandbox_takes_the_requests_limit_when_claimed() {
        require_native("the scratch filesystem's quota groups");
        let d = Daemon::start_with(
            &DataDir::new(),
            Options {
                config: Some(format!(
                    "defaults:\n  disk_limit_mb: 64\npool:\n  enabled: true\n  images:\n    \
                     \"{}\": 1\n",
                    default_image()
                )),
                disable_pool: false,
                ..Options::default()
            },
        );
        let idle = |d: &Daemon| {
            d.get("/v1/pool").expect(200, "GET /v1/pool")["images"][default_image()]["idle"] == 1
        };
        assert!(wait_for(Duration::from_secs(30), || idle(&d)), "no pool");
        let v = d.create_session(json!({"disk_limit_mb": 16}));
        assert_eq!(v["acquire_source"], "pool", "{v}");
        assert_eq!(v["disk_limit_mb"], 16, "{v}");
        let id = v["id"].as_str().unwrap();
        let out = d.exec(
            id,
            "dd if=/dev/zero of=/tmp/f bs=1M count=32 2>&1; echo rc=$?",
        )["output"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            out.contains("Disk quota exceeded"),
            "the pooled sandbox kept the default limit: {out}"
        );
        // The next pooled one, claimed without a limit, has the default.
        assert!(wait_for(Duration::from_secs(30), || idle(&d)), "no refill");
        let v = d.create_session(json!({}));
        assert_eq!(v["acquire_source"], "pool", "{v}");
        assert_eq!(v["disk_limit_mb"], 64, "{v}");
        let id = v["id"].as_str().unwrap();
        let out = d.exec(
            id,
            "dd if=/dev/zero of=/tmp/f bs=1M count=32 2>&1; echo rc=$?",
        )["output"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(out.contains("rc=0"), "{out}");
    }

    /// A tmpfs mounted by the test over a daemon's data dir, unmounted
    /// when dropped (once the loop device over its scratch image let go).
    struct SmallDisk(std::path::PathBuf);

    impl SmallDisk {
        fn mount(at: &Path, mb: u64) -> SmallDisk {
            let c = |p: &str| std::ffi::CString::new(p).unwrap();
            let (src, target, fs, opts) = (
                c("tmpfs"),
                c(at.to_str().unwrap()),
                c("tmpfs"),
                c(&format!("size={mb}m,mode=0755")),
            );
            // SAFETY: mount(2) with valid NUL-terminated strings.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    fs.as_ptr(),
                    0,
                    opts.as_ptr().cast(),
                )
            };
            assert_eq!(
                rc,
                0,
                "mounting a tmpfs: {}",
                std::io::Error::last_os_error()
            );
            SmallDisk(at.to_path_buf())
        }

        fn free(&self) -> u64 {
            let path = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: statvfs into a zeroed struct with a valid path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
            st.f_bavail * st.f_frsize
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // The scratch image's loop device detaches once the daemon and
            // its sandboxes are gone (AUTOCLEAR), a moment after.
            // SAFETY: umount2 of the path we mounted.
            let done = wait_for(Duration::from_secs(10), || unsafe {
                libc::umount2(target.as_ptr(), 0) == 0
            });
            if !done {
                eprintln!(
                    "unmounting {}: {}; detaching it",
                    self.0.display(),
                    std::io::Error::last_os_error()
                );
                // SAFETY: as above.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }

    #[test]
    fn a_full_data_dir_refuses_creates_with_507_until_space_returns() {
        require_native("a data dir on a filesystem the test mounts");
        let home = DataDir::new();
        let disk = SmallDisk::mount(&home.data, 700);
        let config = "disk:\n  scratch_size_mb: 300\n  min_free_mb: 64\n";
        let d = Daemon::start_in(&home, Some(config));
        let kept = d.new_session();
        // Fill the filesystem to 32 MiB short of full.
        let filler = home.data.join("filler");
        let fill = disk.free().saturating_sub(32 << 20);
        let f = std::fs::File::create(&filler).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a file we own.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, fill as libc::off_t) };
        assert_eq!(rc, 0, "filling: {}", std::io::Error::last_os_error());
        drop(f);
        assert!(
            disk.free() < 64 << 20,
            "not full: {} bytes free",
            disk.free()
        );

        let r = d.try_create_session(json!({}));
        r.assert_error(507, "STORAGE_FULL", "a create on a full data dir");
        let message = r.json["message"].as_str().unwrap();
        assert!(message.contains("min_free_mb"), "{message}");
        // Running sessions are not touched, and the store keeps working.
        assert_eq!(d.sh(&kept, "echo alive"), "alive\n");
        assert_eq!(d.listed_ids(), vec![kept.clone()]);

        // No latch: space comes back, creates work again.
        std::fs::remove_file(&filler).unwrap();
        let id = d.new_session();
        assert_eq!(d.sh(&id, "echo fresh"), "fresh\n");
        for id in d.listed_ids() {
            d.delete_session(&id).expect(200, "delete");
        }
        d.terminate();
        drop(d);
        drop(disk);
    }
}
