//! Files end to end: write, read, upload, the list/stat/mkdir/remove
//! extensions, byte-exact binary content, path resolution, and that the
//! files API and the shell see the same files with the same owner.

mod common;

use common::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn upload(d: &Daemon, id: &str, form: Form) -> Resp {
    d.send(
        d.request(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/fs/upload"),
        )
        .multipart(form),
    )
}

fn get_with_path(d: &Daemon, id: &str, route: &str, path: &str) -> Resp {
    d.send(
        d.request(
            reqwest::Method::GET,
            &format!("/v1/sessions/{id}/fs/{route}"),
        )
        .query(&[("path", path)]),
    )
}

#[test]
fn write_text_then_read_back() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "hello.txt", "hi there\nsecond line\n");
    let v = d
        .read_resp(&id, "hello.txt")
        .expect(200, "fs/read hello.txt");
    assert_eq!(v["path"], "/workspace/hello.txt", "{v}");
    assert_eq!(v["truncated"], false, "{v}");
    assert_eq!(
        unb64(v["content_base64"].as_str().unwrap()),
        b"hi there\nsecond line\n"
    );
    // Non-ASCII text is stored as UTF-8.
    d.write_text(&id, "utf8.txt", "grüße ✓\n");
    assert_eq!(d.read(&id, "utf8.txt"), "grüße ✓\n".as_bytes());
}

#[test]
fn relative_and_absolute_paths_meet_under_workspace() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "rel.txt", "r");
    assert_eq!(d.read(&id, "/workspace/rel.txt"), b"r");
    d.write_text(&id, "/workspace/abs.txt", "a");
    let v = d.read_resp(&id, "abs.txt").expect(200, "read abs.txt");
    assert_eq!(v["path"], "/workspace/abs.txt");
    // Relative to /workspace, not to the shell's cwd.
    d.sh(&id, "cd /tmp");
    d.write_text(&id, "after-cd.txt", "w");
    assert_eq!(d.sh(&id, "cat /workspace/after-cd.txt"), "w");
    let v = d.exec(&id, "test -e /tmp/after-cd.txt");
    assert_eq!(
        v["exit_code"], 1,
        "relative write landed in the shell's cwd"
    );
}

#[test]
fn missing_parents_are_created() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "a/b/c/d.txt", "deep");
    assert_eq!(d.sh(&id, "cat /workspace/a/b/c/d.txt"), "deep");
    assert_eq!(
        d.sh(&id, "stat -c %u /workspace/a/b/c"),
        format!("{}\n", sandbox_uid())
    );
    d.write_text(&id, "/tmp/x/y/z.txt", "tmp");
    assert_eq!(d.read(&id, "/tmp/x/y/z.txt"), b"tmp");
}

#[test]
fn all_256_byte_values_round_trip() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let data: Vec<u8> = (0..=255u8).collect();
    d.write(&id, "bytes.bin", &data);
    assert_eq!(d.read(&id, "bytes.bin"), data);
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let out = d.sh(&id, "od -An -v -tx1 /workspace/bytes.bin | tr -d ' \\n'");
    assert_eq!(out, hex, "the shell sees other bytes than were written");
}

#[test]
fn one_mib_of_random_bytes_round_trips() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let data = random_bytes(MIB as usize);
    d.write(&id, "random.bin", &data);
    assert_eq!(d.sh(&id, "wc -c < random.bin"), "1048576\n");
    let back = d.read(&id, "random.bin");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "1 MiB of random bytes changed on the way");
}

#[test]
fn empty_files_are_allowed() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "empty-text.txt", "");
    d.write(&id, "empty.bin", b"");
    for p in ["empty-text.txt", "empty.bin"] {
        let v = d.read_resp(&id, p).expect(200, "read empty file");
        assert_eq!(v["content_base64"], "", "{v}");
        assert_eq!(d.sh(&id, &format!("stat -c %s {p}")), "0\n");
    }
}

#[test]
fn overwrite_replaces_the_whole_content() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "f.txt", "a long first version\n");
    d.write_text(&id, "f.txt", "short\n");
    assert_eq!(d.read(&id, "f.txt"), b"short\n");
}

#[test]
fn read_max_bytes_truncates() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let data: Vec<u8> = (0..100u8).collect();
    d.write(&id, "hundred.bin", &data);
    let r = d.send(
        d.request(reqwest::Method::GET, &format!("/v1/sessions/{id}/fs/read"))
            .query(&[("path", "hundred.bin"), ("max_bytes", "10")]),
    );
    let v = r.expect(200, "read with max_bytes");
    assert_eq!(v["truncated"], true, "{v}");
    assert_eq!(unb64(v["content_base64"].as_str().unwrap()), &data[..10]);
    let r = d.send(
        d.request(reqwest::Method::GET, &format!("/v1/sessions/{id}/fs/read"))
            .query(&[("path", "hundred.bin"), ("max_bytes", "100")]),
    );
    let v = r.expect(200, "read with max_bytes = size");
    assert_eq!(v["truncated"], false, "{v}");
}

#[test]
fn missing_file_is_404_and_directory_is_400() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.read_resp(&id, "does-not-exist.txt")
        .assert_error(404, "FILE_NOT_FOUND", "missing file");
    d.read_resp(&id, "/no/such/dir/file")
        .assert_error(404, "FILE_NOT_FOUND", "missing parent");
    d.read_resp(&id, "/tmp")
        .assert_error(400, "INVALID_PATH", "read of a directory");
    d.read_resp(&id, "/workspace")
        .assert_error(400, "INVALID_PATH", "read of /workspace");
}

#[test]
fn write_requests_need_exactly_one_content() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_with(
        &id,
        json!({"path": "both.txt", "text": "a", "content_base64": "YQ=="}),
    )
    .assert_error(400, "INVALID_REQUEST", "text and content_base64");
    d.write_with(&id, json!({"path": "none.txt"})).assert_error(
        400,
        "INVALID_REQUEST",
        "neither text nor content_base64",
    );
    d.write_with(
        &id,
        json!({"path": "bad.txt", "content_base64": "!!not base64!!"}),
    )
    .assert_error(400, "INVALID_REQUEST", "invalid base64");
    d.write_with(&id, json!({"text": "no path"})).assert_error(
        400,
        "INVALID_REQUEST",
        "missing path",
    );
    for p in ["both.txt", "none.txt", "bad.txt"] {
        d.read_resp(&id, p)
            .assert_error(404, "FILE_NOT_FOUND", "a refused write left a file");
    }
}

#[test]
fn writing_below_a_file_fails_cleanly() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "plain", "x");
    d.write_with(&id, json!({"path": "plain/child.txt", "text": "y"}))
        .assert_client_error("write below a regular file");
    assert_eq!(d.read(&id, "plain"), b"x");
}

#[test]
fn upload_stores_several_files_byte_for_byte() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let form = Form::new()
        .part("files", Part::bytes(binary.clone()).file_name("a.bin"))
        .part(
            "files",
            Part::bytes(b"text part\n".to_vec()).file_name("b.txt"),
        );
    let v = upload(&d, &id, form).expect(200, "upload two files");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["paths"],
        json!(["/workspace/a.bin", "/workspace/b.txt"]),
        "{v}"
    );
    assert_eq!(d.read(&id, "a.bin"), binary);
    assert_eq!(d.read(&id, "b.txt"), b"text part\n");
    let u = sandbox_uid();
    assert_eq!(d.sh(&id, "stat -c %u a.bin b.txt"), format!("{u}\n{u}\n"));
}

#[test]
fn upload_honours_the_path_part_and_the_file_name() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(&id, "mkdir -p /workspace/uploads");
    let data = random_bytes(200_000);
    let form = Form::new()
        .text("path", "/workspace/uploads")
        .part("file", Part::bytes(data.clone()).file_name("c.bin"));
    let v = upload(&d, &id, form).expect(200, "upload with path");
    assert_eq!(v["paths"], json!(["/workspace/uploads/c.bin"]), "{v}");
    assert_eq!(d.read(&id, "uploads/c.bin"), data);

    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("../escape"));
    upload(&d, &id, form).assert_client_error("upload filename with ..");
    let v = d.exec(&id, "test -e /escape || test -e /workspace/../escape");
    assert_eq!(v["exit_code"], 1, "an upload escaped its directory: {v}");
}

#[test]
fn api_files_are_visible_to_exec_and_owned_by_the_sandbox_user() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "from-api.txt", "from the api\n");
    assert_eq!(d.sh(&id, "cat from-api.txt"), "from the api\n");
    let u = sandbox_uid();
    assert_eq!(
        d.sh(&id, "stat -c '%u %g' from-api.txt"),
        format!("{u} {u}\n")
    );
    d.write_text(&id, "/tmp/from-api-tmp.txt", "t");
    assert_eq!(d.sh(&id, "cat /tmp/from-api-tmp.txt"), "t");
    // The shell (as the sandbox user) can modify what the API wrote.
    d.sh(&id, "echo appended >> from-api.txt");
    assert_eq!(d.read(&id, "from-api.txt"), b"from the api\nappended\n");
}

#[test]
fn exec_files_are_visible_to_the_api() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.sh(
        &id,
        "printf 'from-shell' > fromshell.txt; printf '\\000\\377' > /tmp/bin",
    );
    assert_eq!(d.read(&id, "fromshell.txt"), b"from-shell");
    assert_eq!(d.read(&id, "/tmp/bin"), [0u8, 255]);
    // A file only root could read inside the sandbox stays unreadable.
    d.sh(&id, "printf secret > mine.txt; chmod 000 mine.txt");
    let r = d.read_resp(&id, "mine.txt");
    r.assert_client_error("read of a mode-000 file owned by the sandbox user");
}

#[test]
fn files_api_has_the_sandbox_users_rights() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let before = d.read(&id, "/etc/passwd");
    assert!(
        String::from_utf8_lossy(&before).contains("sandbox:"),
        "no sandbox user in /etc/passwd"
    );
    d.write_with(
        &id,
        json!({"path": "/etc/passwd", "text": "evil::0:0::/:/bin/sh\n"}),
    )
    .assert_client_error("write to /etc/passwd as the sandbox user");
    assert_eq!(d.read(&id, "/etc/passwd"), before, "/etc/passwd changed");
    d.write_with(&id, json!({"path": "/etc/new-file", "text": "x"}))
        .assert_client_error("create a file in /etc as the sandbox user");
}

fn entry<'a>(listing: &'a Value, name: &str) -> Option<&'a Value> {
    listing["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("fs/list without an entries array: {listing}"))
        .iter()
        .find(|e| e["name"] == name)
}

#[test]
fn list_stat_mkdir_and_remove_extensions() {
    let d = Daemon::start(None);
    let id = d.new_session();

    let v = d
        .post(
            &format!("/v1/sessions/{id}/fs/mkdir"),
            &json!({"path": "ext/a/b", "parents": true}),
        )
        .expect(200, "fs/mkdir");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["path"], "/workspace/ext/a/b", "{v}");
    assert_eq!(
        d.sh(&id, "stat -c '%F %u' /workspace/ext/a/b"),
        format!("directory {}\n", sandbox_uid())
    );

    d.write_text(&id, "ext/a/f.txt", "hello");
    d.sh(&id, "ln -s f.txt /workspace/ext/a/link");

    let listing = get_with_path(&d, &id, "list", "ext/a").expect(200, "fs/list");
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["b", "f.txt", "link"], "{listing}");
    let f = entry(&listing, "f.txt").unwrap();
    assert_eq!(f["type"], "file", "{f}");
    assert_eq!(f["size"], 5, "{f}");
    assert_eq!(entry(&listing, "b").unwrap()["type"], "dir");
    assert_eq!(entry(&listing, "link").unwrap()["type"], "symlink");

    let st = get_with_path(&d, &id, "stat", "ext/a/f.txt").expect(200, "fs/stat");
    assert_eq!(st["path"], "/workspace/ext/a/f.txt", "{st}");
    assert_eq!(st["type"], "file", "{st}");
    assert_eq!(st["size"], 5, "{st}");
    assert_eq!(st["uid"], sandbox_uid(), "{st}");
    let st = get_with_path(&d, &id, "stat", "ext/a/link").expect(200, "fs/stat link");
    assert_eq!(st["type"], "symlink", "{st}");
    assert_eq!(st["link_target"], "f.txt", "{st}");
    get_with_path(&d, &id, "stat", "ext/nope").assert_error(404, "FILE_NOT_FOUND", "stat missing");

    d.post(
        &format!("/v1/sessions/{id}/fs/remove"),
        &json!({"path": "ext/a"}),
    )
    .assert_client_error("non-recursive remove of a non-empty directory");
    let v = d
        .post(
            &format!("/v1/sessions/{id}/fs/remove"),
            &json!({"path": "ext", "recursive": true}),
        )
        .expect(200, "fs/remove recursive");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(d.exec(&id, "test -e /workspace/ext")["exit_code"], 1);
    d.read_resp(&id, "ext/a/f.txt")
        .assert_error(404, "FILE_NOT_FOUND", "read after remove");
}

#[test]
fn a_file_read_does_not_wait_behind_a_long_exec() {
    let d = Daemon::start(None);
    let id = d.new_session();
    d.write_text(&id, "quick.txt", "q");
    let mut st = d.open_stream(&id, json!({"cmd": "echo busy; sleep 3"}));
    let first = st.next_event().expect("no first event");
    assert_eq!(first.data["chunk"], "busy\n", "{}", first.raw);
    let t = Instant::now();
    assert_eq!(d.read(&id, "quick.txt"), b"q");
    d.write_text(&id, "during.txt", "w");
    let elapsed = t.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "file calls waited for the running exec: {elapsed:?}"
    );
    let rest = st.rest();
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("done"));
}

/// The exact JSON of `fs/read` for a file of `size` zero bytes at
/// `/workspace/{path}` (zero bytes are 'A's, then the last group's padding).
fn zeros_answer(path: &str, size: u64) -> Vec<u8> {
    let pad = [0, 2, 1][(size % 3) as usize];
    let chars = size.div_ceil(3) * 4;
    let mut body = format!(r#"{{"path":"/workspace/{path}","content_base64":""#).into_bytes();
    body.resize(body.len() + (chars - pad) as usize, b'A');
    body.resize(body.len() + pad as usize, b'=');
    body.extend_from_slice(br#"","truncated":false}"#);
    body
}

/// Reads `path` through `route` (a session's or a workspace's `fs/read`)
/// as a stream and compares it, piece by piece, with `want`, without
/// holding the answer.
fn read_streamed(d: &Daemon, route: &str, path: &str, want: &[u8]) -> Result<(), String> {
    use std::io::Read;
    let mut resp = d
        .request(reqwest::Method::GET, route)
        .query(&[("path", path)])
        .timeout(Duration::from_secs(300))
        .send()
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let mut text = String::new();
        let _ = resp.read_to_string(&mut text);
        return Err(format!("{status}: {text:.300}"));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| format!("the body broke off after {at} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        let end = (at + n).min(want.len());
        if buf[..n] != want[at..end] {
            return Err(format!(
                "the body differs within bytes {at}..{}: {:?}",
                at + n,
                String::from_utf8_lossy(&buf[..n.min(80)])
            ));
        }
        at += n;
    }
    if at != want.len() {
        return Err(format!("{at} bytes of body, wanted {}", want.len()));
    }
    Ok(())
}

/// The daemon's peak resident memory (VmHWM) in MiB.
fn daemon_peak_mib(d: &Daemon) -> u64 {
    daemon_mib(d, "VmHWM")
}

/// A memory figure of the daemon's (`VmHWM`, `VmRSS`) in MiB.
fn daemon_mib(d: &Daemon, field: &str) -> u64 {
    let v = proc_status_field(d.pid(), field).expect("memory figure of the daemon");
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// 16 concurrent reads of `path` through `route`; every failure.
fn sixteen_reads(d: &Daemon, route: &str, path: &str, want: &[u8]) -> Vec<String> {
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..16)
            .map(|_| s.spawn(|| read_streamed(d, route, path, want)))
            .collect();
        readers
            .into_iter()
            .filter_map(|t| t.join().unwrap().err())
            .collect()
    })
}

/// A whole 64 MiB file and its base64 in the daemon would be 150 MiB; a
/// streamed read holds a few chunks of each.
const DAEMON_GROWTH_BOUND_MIB: u64 = 100;

/// Issue 15 (an attack on a live daemon): 16 concurrent reads of a 64 MiB
/// sparse file in `/workspace` OOM-killed the sandbox's agent (PID 1) under
/// the default 512 MiB limit, and the session was lost. Reads stream in
/// bounded memory: every read gets the whole file and the session lives on.
#[test]
fn concurrent_huge_reads_neither_kill_the_agent_nor_lose_the_session() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let size = 64 * MIB;
    d.sh(&id, &format!("truncate -s {size} /workspace/big"));
    let route = format!("/v1/sessions/{id}/fs/read");
    let want = zeros_answer("big", size);
    let before = daemon_peak_mib(&d);
    let failed = sixteen_reads(&d, &route, "big", &want);
    let grown = daemon_peak_mib(&d) - before;
    eprintln!("daemon peak memory: {before} MiB before the reads, grown by {grown} MiB");
    let session = d
        .get_session(&id)
        .expect(200, "the session after the reads");
    assert!(
        failed.is_empty(),
        "{} of 16 reads failed (session now {}): {failed:?}",
        failed.len(),
        session["status"]
    );
    assert_eq!(session["status"], "running", "{session}");
    assert_eq!(d.sh(&id, "echo alive"), "alive\n");
    assert!(
        grown < DAEMON_GROWTH_BOUND_MIB,
        "the daemon's peak memory grew by {grown} MiB during the reads"
    );
}

/// Uploads and writes are read whole before they are written, about 2.5
/// times their size in the daemon at the peak: 16 at once at the body
/// limit took it past 1.6 GB. They hold room in the body budget
/// (`body_memory_mb`) while served: past it they queue. With a budget of
/// two bodies, 16 concurrent 8 MiB uploads and writes (10.7 MiB of base64)
/// all land, and the daemon's peak grows by about two of them, not
/// sixteen (measured: 66 MiB; 240 MiB without the budget). Once they are
/// done the daemon gives the memory back (it kept 200 MiB).
#[test]
fn concurrent_uploads_queue_for_the_body_budget_in_bounded_memory() {
    let d = Daemon::start(Some("max_body_mb: 12\nbody_memory_mb: 24\n"));
    let id = d.new_session();
    let size = 8 * MIB as usize;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let encoded = b64(&data);
    let before = daemon_peak_mib(&d);
    let resident = daemon_mib(&d, "VmRSS");
    let failures: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let (d, id, data, encoded) = (&d, &id, &data, &encoded);
                s.spawn(move || {
                    let r = if i % 2 == 0 {
                        let part = Part::bytes(data.clone()).file_name(format!("up{i}.bin"));
                        upload(d, id, Form::new().part("file", part))
                    } else {
                        d.write_with(
                            id,
                            json!({"path": format!("up{i}.bin"), "content_base64": encoded}),
                        )
                    };
                    (r.status != 200).then(|| format!("call {i}: {} {}", r.status, r.text))
                })
            })
            .collect();
        calls
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect()
    });
    let grown = daemon_peak_mib(&d) - before;
    eprintln!("daemon peak memory: {before} MiB before the uploads, grown by {grown} MiB");
    assert!(failures.is_empty(), "{failures:?}");
    let sizes = d.sh(
        &id,
        "for i in $(seq 0 15); do wc -c < up$i.bin; done | sort -u",
    );
    assert_eq!(sizes, format!("{size}\n"), "every file landed whole");
    // Two bodies at a time: each body, its decoded copy and the copy on
    // the way to the sandbox.
    assert!(
        grown < 130,
        "the daemon's peak memory grew by {grown} MiB during 16 uploads of 8 MiB"
    );
    assert!(
        wait_for(Duration::from_secs(10), || daemon_mib(&d, "VmRSS")
            < resident + 24),
        "the daemon kept {} MiB after the uploads ({resident} MiB before)",
        daemon_mib(&d, "VmRSS")
    );
}

/// The session-less path: reads of a workspace's file stream through the
/// daemon (native: from the host; docker: from the volume, or a helper
/// container's agent on a remote engine) in bounded memory too.
#[test]
fn concurrent_huge_workspace_reads_stream_through_the_daemon_in_bounded_memory() {
    let d = Daemon::start(None);
    let ws = ws_id("huge-reads");
    let id = d.create_session(json!({"workspace_id": ws}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let size = 64 * MIB;
    d.sh(&id, &format!("truncate -s {size} /workspace/big"));
    d.delete(&id);
    let want = zeros_answer("big", size);
    let before = daemon_peak_mib(&d);
    let failed = sixteen_reads(&d, &format!("/v1/workspaces/{ws}/fs/read"), "big", &want);
    let grown = daemon_peak_mib(&d) - before;
    eprintln!("daemon peak memory: {before} MiB before the reads, grown by {grown} MiB");
    assert!(
        failed.is_empty(),
        "{} of 16 reads failed: {failed:?}",
        failed.len()
    );
    assert!(
        grown < DAEMON_GROWTH_BOUND_MIB,
        "the daemon's peak memory grew by {grown} MiB during the reads"
    );
    // The reads held the workspace only while they ran.
    d.del(&format!("/v1/workspaces/{ws}"))
        .expect(200, "delete the workspace");
}

/// What a client asks that a filesystem refuses (a name over NAME_MAX, a
/// path over PATH_MAX, a directory moved into itself) is the client's 400,
/// never a 500.
#[test]
fn names_too_long_and_moves_into_themselves_are_400() {
    let d = Daemon::start(None);
    let id = d.new_session();
    let long_name = format!("/workspace/{}", "n".repeat(300));
    let r = d.post(
        &format!("/v1/sessions/{id}/fs/mkdir"),
        &serde_json::json!({"path": long_name}),
    );
    r.assert_client_error("mkdir of a name over NAME_MAX");
    assert_eq!(r.status, 400, "{}", r.text);
    let long_path = format!("/workspace/{}", "d/".repeat(2100));
    let r = get_with_path(&d, &id, "stat", &long_path);
    assert_eq!(r.status, 400, "stat of a path over PATH_MAX: {}", r.text);
    d.sh(&id, "mkdir -p /workspace/a/b");
    let r = d.post(
        &format!("/v1/sessions/{id}/fs/move"),
        &serde_json::json!({"from": "/workspace/a", "to": "/workspace/a/b/c"}),
    );
    assert_eq!(r.status, 400, "a directory moved into itself: {}", r.text);
    assert_eq!(d.sh(&id, "ls /workspace/a"), "b\n");
}
