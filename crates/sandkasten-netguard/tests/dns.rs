//! The DNS server against an upstream resolver this test runs (UDP and TCP
//! on loopback), with the sandboxes of a test table: what is answered,
//! what is opened, what is denied and recorded.

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sandkasten_netguard::{DnsConfig, DnsServer, EventLog, NotOpened, Sandboxes};
use sandkasten_runtime::{NetEntry, NetworkMode, NetworkPolicy};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A UDP socket and a TCP listener on one loopback port (a port free for
/// UDP may be taken for TCP by another test: the next one is tried).
async fn udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// The upstream's zone: name → (records, ttl).
fn zone(name: &str) -> Option<(Vec<IpAddr>, u32)> {
    let ips = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect();
    match name {
        "ok.test." => Some((ips(&["203.0.113.10", "2001:db8::10"]), 5)),
        "api.pkg.test." => Some((ips(&["203.0.113.11"]), 120)),
        "rebind.test." => Some((ips(&["127.0.0.1", "10.0.0.7", "203.0.113.12"]), 60)),
        "long.test." => Some((ips(&["203.0.113.13"]), 86_400)),
        _ => None,
    }
}

fn upstream_answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_available(true);
    m.add_queries(q.queries().to_vec());
    let question = &q.queries()[0];
    match zone(&question.name().to_ascii()) {
        None => {
            m.set_response_code(ResponseCode::NXDomain);
        }
        Some((ips, ttl)) => {
            for ip in ips {
                let data = match (ip, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(question.name().clone(), ttl, data));
            }
        }
    }
    m.to_vec().unwrap()
}

/// The test's upstream resolver on loopback (UDP and TCP, one port);
/// counts the queries it got.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let (udp, tcp) = udp_and_tcp().await;
    let addr = udp.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let n = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = udp.recv_from(&mut buf).await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            udp.send_to(&upstream_answer(&buf[..len]), from)
                .await
                .unwrap();
        }
    });
    let n = asked.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = tcp.accept().await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let len = c.read_u16().await.unwrap() as usize;
                let mut q = vec![0u8; len];
                c.read_exact(&mut q).await.unwrap();
                let a = upstream_answer(&q);
                c.write_u16(a.len() as u16).await.unwrap();
                c.write_all(&a).await.unwrap();
            });
        }
    });
    (addr, asked)
}

/// Sandboxes of the test: 127.0.0.1 is session `s1` with `policy`; what
/// was opened, in order, with the time it was opened.
struct Table {
    policy: Mutex<Arc<NetworkPolicy>>,
    opened: Mutex<Vec<(IpAddr, Duration, Instant)>>,
}

impl Sandboxes for Table {
    fn lookup(&self, src: IpAddr) -> Option<(String, Arc<NetworkPolicy>)> {
        (src == IpAddr::from([127, 0, 0, 1]))
            .then(|| ("s1".into(), self.policy.lock().unwrap().clone()))
    }
    fn allow(
        &self,
        id: &str,
        addr: IpAddr,
        ttl: Duration,
        under: &Arc<NetworkPolicy>,
    ) -> Result<(), NotOpened> {
        assert_eq!(id, "s1");
        // As the daemon's view: the check and the opening under one lock.
        let current = self.policy.lock().unwrap();
        if !Arc::ptr_eq(&current, under) {
            return Err(NotOpened::Stale);
        }
        self.opened
            .lock()
            .unwrap()
            .push((addr, ttl, Instant::now()));
        Ok(())
    }
}

fn policy(allow: &[&str], deny: &[&str]) -> NetworkPolicy {
    let parse = |v: &[&str]| v.iter().map(|e| NetEntry::parse(e).unwrap()).collect();
    NetworkPolicy {
        mode: NetworkMode::Full,
        allow_out: parse(allow),
        deny_out: parse(deny),
    }
}

struct Guard {
    udp: SocketAddr,
    table: Arc<Table>,
    events: Arc<EventLog>,
    asked: Arc<AtomicUsize>,
}

async fn guard(p: NetworkPolicy, upstream_at: Option<SocketAddr>) -> Guard {
    let (up, asked) = upstream().await;
    let table = Arc::new(Table {
        policy: Mutex::new(Arc::new(p)),
        opened: Mutex::new(Vec::new()),
    });
    let events = Arc::new(EventLog::default());
    let server = DnsServer::new(
        DnsConfig {
            upstream: upstream_at.unwrap_or(up),
            deny_always: sandkasten_runtime::default_deny_always(),
        },
        table.clone(),
        events.clone(),
    );
    let (udp, tcp) = udp_and_tcp().await;
    let addr = udp.local_addr().unwrap();
    tokio::spawn(server.clone().serve_udp(udp));
    tokio::spawn(server.serve_tcp(tcp));
    Guard {
        udp: addr,
        table,
        events,
        asked,
    }
}

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn ask_udp(at: SocketAddr, name: &str, t: RecordType) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&query(name, t, 0x1234), at).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.id(), 0x1234);
    m
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_allowed_name_is_answered_and_its_addresses_opened_before_the_answer() {
    let g = guard(policy(&["ok.test", "*.pkg.test"], &[]), None).await;
    let sent = Instant::now();
    let m = ask_udp(g.udp, "ok.test.", RecordType::A).await;
    let got = Instant::now();
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(addrs(&m), ["203.0.113.10"]);
    let m6 = ask_udp(g.udp, "OK.Test.", RecordType::AAAA).await;
    assert_eq!(addrs(&m6), ["2001:db8::10"]);
    let m2 = ask_udp(g.udp, "api.pkg.test.", RecordType::A).await;
    assert_eq!(addrs(&m2), ["203.0.113.11"]);
    let opened = g.table.opened.lock().unwrap().clone();
    let ips: Vec<String> = opened.iter().map(|o| o.0.to_string()).collect();
    assert_eq!(ips, ["203.0.113.10", "2001:db8::10", "203.0.113.11"]);
    // A 5 s TTL is opened for the floor of 30 s; 120 s for 120 s.
    assert_eq!(opened[0].1, Duration::from_secs(30));
    assert_eq!(opened[2].1, Duration::from_secs(120));
    assert!(opened[0].2 >= sent && opened[0].2 <= got);
    assert!(g.events.list("s1").is_empty());
}

#[tokio::test]
async fn names_the_policy_does_not_allow_are_nxdomain_and_recorded_without_asking_upstream() {
    let g = guard(policy(&["*.pkg.test"], &["bad.pkg.test"]), None).await;
    for name in ["ok.test.", "pkg.test.", "bad.pkg.test."] {
        let m = ask_udp(g.udp, name, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{name}");
        assert!(m.answers().is_empty());
    }
    assert_eq!(g.asked.load(Ordering::SeqCst), 0, "upstream was asked");
    let ev = g.events.list("s1");
    let seen: Vec<(&str, &str)> = ev
        .iter()
        .map(|d| (d.destination.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("ok.test", "not in allow_out"),
            ("pkg.test", "not in allow_out"),
            ("bad.pkg.test", "denied by deny_out")
        ]
    );
    assert_eq!(g.events.total(), 3);
    assert!(g.table.opened.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_policy_change_applies_to_the_next_query() {
    let g = guard(policy(&["ok.test"], &[]), None).await;
    assert_eq!(
        ask_udp(g.udp, "ok.test.", RecordType::A)
            .await
            .response_code(),
        ResponseCode::NoError
    );
    *g.table.policy.lock().unwrap() = Arc::new(policy(&["api.pkg.test"], &[]));
    assert_eq!(
        ask_udp(g.udp, "ok.test.", RecordType::A)
            .await
            .response_code(),
        ResponseCode::NXDomain
    );
}

#[tokio::test]
async fn addresses_in_denied_ranges_are_taken_out_and_long_ttls_cut() {
    let g = guard(policy(&[], &[]), None).await;
    let m = ask_udp(g.udp, "rebind.test.", RecordType::A).await;
    assert_eq!(addrs(&m), ["203.0.113.12"]);
    let ev = g.events.list("s1");
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0].destination, "127.0.0.1");
    assert_eq!(ev[0].name.as_deref(), Some("rebind.test"));
    let m = ask_udp(g.udp, "long.test.", RecordType::A).await;
    assert_eq!(m.answers()[0].ttl(), 3600);
    let opened = g.table.opened.lock().unwrap().clone();
    let ips: Vec<String> = opened.iter().map(|o| o.0.to_string()).collect();
    assert_eq!(ips, ["203.0.113.12", "203.0.113.13"]);
    assert_eq!(opened[1].1, Duration::from_secs(3600));
    // A name the upstream does not know stays NXDOMAIN (its own answer).
    let m = ask_udp(g.udp, "nowhere.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(
        g.events.list("s1").len() == 2,
        "an upstream NXDOMAIN is no denial"
    );
}

#[tokio::test]
async fn tcp_queries_are_answered_alike() {
    let g = guard(policy(&["ok.test"], &[]), None).await;
    let mut c = TcpStream::connect(g.udp).await.unwrap();
    for (name, code) in [
        ("ok.test.", ResponseCode::NoError),
        ("other.test.", ResponseCode::NXDomain),
    ] {
        let q = query(name, RecordType::A, 7);
        c.write_u16(q.len() as u16).await.unwrap();
        c.write_all(&q).await.unwrap();
        let len = c.read_u16().await.unwrap() as usize;
        let mut a = vec![0u8; len];
        c.read_exact(&mut a).await.unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!((m.id(), m.response_code()), (7, code), "{name}");
    }
    assert_eq!(g.table.opened.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_dead_upstream_is_servfail_at_once_and_garbage_is_formerr() {
    // A UDP port nobody listens on: the kernel answers port unreachable.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let g = guard(policy(&[], &[]), Some(dead)).await;
    let started = Instant::now();
    let m = ask_udp(g.udp, "ok.test.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(
        &[0xab, 0xcd, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        g.udp,
    )
    .await
    .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
}

#[tokio::test]
async fn queries_from_an_address_of_no_sandbox_get_no_answer() {
    let g = guard(policy(&[], &[]), None).await;
    let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    s.send_to(&query("ok.test.", RecordType::A, 1), g.udp)
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let r = tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await;
    assert!(r.is_err(), "answered a stranger");
    assert_eq!(g.asked.load(Ordering::SeqCst), 0);
}

/// An upstream on loopback that the test holds: each query it gets is
/// sent on the channel with a sender for the go-ahead; it answers (from
/// the zone) once that is sent.
async fn held_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>,
) {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = udp.recv_from(&mut buf).await.unwrap();
            let q = buf[..len].to_vec();
            let (go, wait) = tokio::sync::oneshot::channel();
            if tx.send((q.clone(), go)).is_err() {
                return;
            }
            let udp = udp.clone();
            tokio::spawn(async move {
                if wait.await.is_ok() {
                    let _ = udp.send_to(&upstream_answer(&q), from).await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_answer_that_arrives_after_a_policy_change_opens_nothing() {
    let (up, mut queries) = held_upstream().await;
    let g = guard(policy(&["ok.test"], &[]), Some(up)).await;
    let asking = tokio::spawn(ask_udp(g.udp, "ok.test.", RecordType::A));
    let (_, go) = queries.recv().await.unwrap();
    // The change lands while the upstream holds the answer.
    *g.table.policy.lock().unwrap() = Arc::new(policy(&["api.pkg.test"], &[]));
    go.send(()).unwrap();
    let m = asking.await.unwrap();
    assert_eq!(m.response_code(), ResponseCode::ServFail);
    assert!(addrs(&m).is_empty());
    assert!(
        g.table.opened.lock().unwrap().is_empty(),
        "an answer checked under the old policy opened an address under the new one"
    );
    // Asked again, the name is checked under the new policy.
    assert_eq!(
        ask_udp(g.udp, "ok.test.", RecordType::A)
            .await
            .response_code(),
        ResponseCode::NXDomain
    );
}

#[tokio::test]
async fn only_the_checked_question_goes_upstream() {
    let (up, mut queries) = held_upstream().await;
    let g = guard(policy(&["ok.test"], &[]), Some(up)).await;
    // A query with a record of the sandbox's own in its additional
    // section, and bytes after the message.
    let mut m = Message::from_vec(&query("ok.test.", RecordType::A, 0x1234)).unwrap();
    m.add_additional(Record::from_rdata(
        Name::from_str("exfil-data.evil.test.").unwrap(),
        60,
        RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["secret".into()])),
    ));
    let mut bytes = m.to_vec().unwrap();
    bytes.extend_from_slice(b"trailing-junk");
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&bytes, g.udp).await.unwrap();
    let (got, go) = queries.recv().await.unwrap();
    go.send(()).unwrap();
    let sent = Message::from_vec(&got).unwrap();
    assert_eq!(sent.id(), 0x1234);
    assert_eq!(sent.queries().len(), 1);
    assert_eq!(sent.queries()[0].name().to_ascii(), "ok.test.");
    assert!(sent.additionals().is_empty(), "{sent:?}");
    assert_eq!(
        got.len(),
        sent.to_vec().unwrap().len(),
        "bytes beyond the message went upstream"
    );
    assert!(!String::from_utf8_lossy(&got).contains("exfil"));
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        addrs(&Message::from_vec(&buf[..n]).unwrap()),
        ["203.0.113.10"]
    );
}

#[tokio::test]
async fn a_sandbox_has_a_bounded_number_of_queries_at_the_upstream() {
    let (up, mut queries) = held_upstream().await;
    let g = guard(policy(&["ok.test"], &[]), Some(up)).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let n = sandkasten_netguard::MAX_IN_FLIGHT;
    let mut held = Vec::new();
    for i in 0..n {
        s.send_to(&query("ok.test.", RecordType::A, i as u16), g.udp)
            .await
            .unwrap();
        held.push(queries.recv().await.unwrap().1);
    }
    // One more is refused at once, without asking upstream.
    s.send_to(&query("ok.test.", RecordType::A, 0xbeef), g.udp)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .expect("the query over the cap was not answered at once")
        .unwrap();
    let m = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(
        (m.id(), m.response_code()),
        (0xbeef, ResponseCode::ServFail)
    );
    assert!(
        queries.try_recv().is_err(),
        "the query over the cap went upstream"
    );
    // Answers give the places back.
    for go in held {
        go.send(()).unwrap();
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), s.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
    }
    let asking = tokio::spawn(ask_udp(g.udp, "ok.test.", RecordType::A));
    queries.recv().await.unwrap().1.send(()).unwrap();
    assert_eq!(asking.await.unwrap().response_code(), ResponseCode::NoError);
}
