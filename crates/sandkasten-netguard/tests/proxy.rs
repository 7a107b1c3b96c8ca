//! The SNI/Host proxy with real TCP on loopback: a destination server the
//! test runs, HTTP requests, and real TLS ClientHellos from Python's `ssl`.

use sandkasten_netguard::{EventLog, NotOpened, OriginalDestination, Proxy, Resolved, Sandboxes};
use sandkasten_runtime::{NetEntry, NetworkMode, NetworkPolicy};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Table(NetworkPolicy);

impl Sandboxes for Table {
    fn lookup(&self, src: IpAddr) -> Option<(String, Arc<NetworkPolicy>)> {
        (src == IpAddr::from([127, 0, 0, 1])).then(|| ("s1".into(), Arc::new(self.0.clone())))
    }
    fn allow(
        &self,
        _: &str,
        _: IpAddr,
        _: Duration,
        _: &Arc<NetworkPolicy>,
    ) -> Result<(), NotOpened> {
        Ok(())
    }
}

/// Every connection "was going" to the test's destination server (on
/// loopback, which stands in for a remote host here unless `host` says
/// it is the host: `Conntrack` knows the real answer, unit-tested).
struct To(SocketAddr, bool);

impl OriginalDestination for To {
    fn original_destination(&self, _: &TcpStream) -> std::io::Result<SocketAddr> {
        Ok(self.0)
    }
    fn is_host(&self, _: IpAddr) -> bool {
        self.1
    }
}

/// The destination: records what each connection sent first, answers
/// `HTTP/1.1 200` once it has a request head (or 16 bytes of anything).
async fn destination() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 16 {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                s.lock().unwrap().push(got);
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    (at, seen)
}

struct Setup {
    proxy: SocketAddr,
    dest: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    events: Arc<EventLog>,
    resolved: Arc<Resolved>,
}

async fn setup(allow: &[&str], deny: &[&str]) -> Setup {
    setup_to(allow, deny, false).await
}

async fn setup_to(allow: &[&str], deny: &[&str], host: bool) -> Setup {
    let parse = |v: &[&str]| v.iter().map(|e| NetEntry::parse(e).unwrap()).collect();
    let policy = NetworkPolicy {
        mode: NetworkMode::Full,
        allow_out: parse(allow),
        deny_out: parse(deny),
    };
    let (dest, seen) = destination().await;
    let events = Arc::new(EventLog::default());
    let resolved = Arc::new(Resolved::default());
    // The destination is on loopback, which the operator's default denies:
    // this proxy's operator denies nothing, so the names decide.
    let proxy = Proxy::new(
        Vec::new(),
        Arc::new(Table(policy)),
        resolved.clone(),
        events.clone(),
        Box::new(To(dest, host)),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    tokio::spawn(proxy.serve(l));
    Setup {
        proxy: at,
        dest,
        seen,
        events,
        resolved,
    }
}

/// An HTTP request naming `host` through the proxy: the answer, or the
/// error the client saw.
async fn http(at: SocketAddr, host: &str) -> Result<String, std::io::ErrorKind> {
    let mut c = TcpStream::connect(at).await.unwrap();
    let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
    c.write_all(req.as_bytes()).await.map_err(|e| e.kind())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
            Err(_) => panic!("no answer and no reset within 10 s"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"ok") {
                    break;
                }
            }
            Ok(Err(e)) => return Err(e.kind()),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A real TLS handshake start from Python's `ssl` naming `sni`: "reset"
/// when the proxy refused it, else what the client saw of the (plain)
/// destination.
fn tls(at: SocketAddr, sni: &str) -> String {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[3])
    print("handshake")
except ConnectionResetError:
    print("reset")
except ssl.SSLError as e:
    print("tls-error")
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &at.ip().to_string(),
            &at.port().to_string(),
            sni,
        ])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn http_is_let_through_by_an_allowed_host_and_reset_otherwise() {
    let s = setup(&["ok.test", "*.pkg.test"], &["bad.pkg.test"]).await;
    s.resolved.open("s1", s.dest.ip(), Duration::from_secs(60));
    let r = http(s.proxy, "ok.test").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r:?}");
    let r = http(s.proxy, "Files.Pkg.Test:8080").await.unwrap();
    assert!(r.ends_with("ok"), "{r:?}");
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(
        String::from_utf8_lossy(&seen[0]),
        "GET /x HTTP/1.1\r\nHost: ok.test\r\n\r\n",
        "the destination gets the request as sent"
    );
    for host in ["other.test", "bad.pkg.test"] {
        let started = Instant::now();
        let r = http(s.proxy, host).await;
        assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset), "{host}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        s.seen.lock().unwrap().len(),
        2,
        "a refused one reached the destination"
    );
    let ev = s.events.list("s1");
    let got: Vec<(Option<&str>, &str)> = ev
        .iter()
        .map(|d| (d.name.as_deref(), d.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some("other.test"), "not in allow_out"),
            (Some("bad.pkg.test"), "denied by deny_out")
        ]
    );
    assert_eq!(ev[0].destination, s.dest.to_string());
}

#[tokio::test]
async fn an_allowed_name_to_an_address_it_was_not_resolved_to_is_refused() {
    let s = setup(&["ok.test"], &[]).await;
    assert_eq!(
        http(s.proxy, "ok.test").await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(
        s.events.list("s1")[0].reason,
        "the address was not resolved for the sandbox"
    );
}

#[tokio::test]
async fn tls_is_checked_by_its_sni() {
    let s = setup(&["ok.test"], &[]).await;
    s.resolved.open("s1", s.dest.ip(), Duration::from_secs(60));
    let at = s.proxy;
    let allowed = tokio::task::spawn_blocking(move || tls(at, "ok.test"))
        .await
        .unwrap();
    // Let through: the destination (plain HTTP here) got the ClientHello
    // and answered something that is not TLS.
    assert_eq!(allowed, "tls-error");
    let first = s.seen.lock().unwrap()[0].clone();
    assert_eq!(first[0], 0x16, "not a TLS record: {first:?}");
    let denied = tokio::task::spawn_blocking(move || tls(at, "evil.test"))
        .await
        .unwrap();
    assert_eq!(denied, "reset");
    assert_eq!(s.events.list("s1")[0].name.as_deref(), Some("evil.test"));
}

// Blocking clients: the proxy runs on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_name_only_an_open_policy_or_an_address_entry_lets_through() {
    let names_only = setup(&["ok.test"], &[]).await;
    let mut c = std::net::TcpStream::connect(names_only.proxy).unwrap();
    c.write_all(b"SSH-2.0-test\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let r = c.read(&mut buf);
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset)
    );
    let open = setup(&[], &[]).await;
    let mut c = std::net::TcpStream::connect(open.proxy).unwrap();
    c.write_all(b"SSH-2.0-test\r\n\r\n").unwrap();
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r");
    // An address allow_out lists is reached whatever the request names,
    // unless the name is denied.
    let by_ip = setup(&["127.0.0.0/8"], &["bad.test"]).await;
    assert!(http(by_ip.proxy, "anything.test")
        .await
        .unwrap()
        .ends_with("ok"));
    assert!(http(by_ip.proxy, "127.0.0.1")
        .await
        .unwrap()
        .ends_with("ok"));
    assert_eq!(
        http(by_ip.proxy, "bad.test").await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn the_host_itself_is_refused_whatever_the_policy() {
    let s = setup_to(&[], &[], true).await;
    assert_eq!(
        http(s.proxy, "ok.test").await,
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(
        s.events.list("s1")[0].reason,
        "the destination is the host itself"
    );
}
