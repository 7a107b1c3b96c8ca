//! The DNS server sandboxes ask (UDP and TCP on the sandboxes' gateway).
//!
//! A query is answered only for a sandbox the source address belongs to,
//! and only for a name its policy allows: anything else is NXDOMAIN at
//! once, recorded as a denial. An allowed query goes to the upstream
//! resolver rebuilt from what was checked (same id, same transport, its
//! one question and its EDNS size and DO bit; nothing else the sandbox
//! put in it); from the answer, every A/AAAA address that is not in a
//! denied range joins the sandbox's allowed set for the record's TTL (at
//! least [`MIN_ALLOW`], at most [`MAX_TTL`], and the answer's TTL is cut
//! to the same cap) before the answer goes back, and addresses in denied
//! ranges are taken out of it. If the sandbox's policy changed while the
//! upstream answered, nothing opens and the answer is SERVFAIL (the
//! client asks again, under the new policy). A sandbox has at most
//! [`MAX_IN_FLIGHT`] queries at the upstream at once; more are SERVFAIL.

use crate::events::{Denial, EventLog};
use crate::policy::{addr_verdict, name_verdict};
use crate::{NotOpened, Sandboxes};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use sandkasten_runtime::{IpNet, NetworkPolicy};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// An allowed address stays open at least this long, so a client that
/// connects right after a short-TTL answer is not refused.
pub const MIN_ALLOW: Duration = Duration::from_secs(30);
/// No answer is trusted (or kept open) longer than this.
pub const MAX_TTL: u32 = 3600;
/// How long the upstream has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message over UDP we accept or relay (EDNS0's common size).
const UDP_MAX: usize = 4096;
/// Queries of one sandbox at the upstream at once: each holds a socket
/// until the upstream answers or [`UPSTREAM_TIMEOUT`], so without a cap a
/// sandbox asking fast for names a slow upstream answers could take the
/// daemon's descriptors.
pub const MAX_IN_FLIGHT: usize = 64;

/// Settings of the DNS server.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The resolver allowed queries are forwarded to.
    pub upstream: SocketAddr,
    /// `network.deny_always`: addresses no answer may open.
    pub deny_always: Vec<IpNet>,
}

/// The DNS server: shared by the UDP and TCP listeners.
pub struct DnsServer {
    cfg: DnsConfig,
    sandboxes: Arc<dyn Sandboxes>,
    events: Arc<EventLog>,
    /// Queries at the upstream, per sandbox.
    in_flight: Mutex<HashMap<String, usize>>,
}

impl DnsServer {
    pub fn new(
        cfg: DnsConfig,
        sandboxes: Arc<dyn Sandboxes>,
        events: Arc<EventLog>,
    ) -> Arc<DnsServer> {
        Arc::new(DnsServer {
            cfg,
            sandboxes,
            events,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Answers queries on `sock` until it fails; each query in a task of
    /// its own (a slow upstream holds up nobody else).
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) -> io::Result<()> {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; UDP_MAX];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                // An ICMP error of an earlier reply; not the socket's end.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            let query = buf[..n].to_vec();
            let (me, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                if let Some(reply) = me.answer(from.ip(), &query, false).await {
                    let _ = sock.send_to(&reply, from).await;
                }
            });
        }
    }

    /// Answers queries on connections to `listener` (RFC 7766 framing:
    /// a two-byte length before each message), one task per connection.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let (conn, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.serve_conn(conn, from.ip()).await;
            });
        }
    }

    async fn serve_conn(&self, mut conn: TcpStream, from: IpAddr) -> io::Result<()> {
        loop {
            let query =
                match tokio::time::timeout(UPSTREAM_TIMEOUT * 2, read_framed(&mut conn)).await {
                    Ok(Ok(q)) => q,
                    // The client closed, or stayed idle: done.
                    _ => return Ok(()),
                };
            let Some(reply) = self.answer(from, &query, true).await else {
                return Ok(());
            };
            write_framed(&mut conn, &reply).await?;
        }
    }

    /// The reply to one query from `from`; `None`: no reply at all (not a
    /// query, or not from a sandbox).
    async fn answer(&self, from: IpAddr, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let (id, policy) = self.sandboxes.lookup(from)?;
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            // Not even a header we can answer to: drop it.
            Err(_) if query.len() < 12 => return None,
            Err(_) => return Some(refusal(query, ResponseCode::FormErr)),
        };
        if msg.message_type() != MessageType::Query {
            return None;
        }
        if msg.op_code() != OpCode::Query {
            return Some(error_reply(&msg, ResponseCode::NotImp));
        }
        let [question] = msg.queries() else {
            return Some(error_reply(&msg, ResponseCode::FormErr));
        };
        let name = normalize(&question.name().to_ascii());
        if let Err(reason) = name_verdict(&policy, &name) {
            self.deny(&id, name.clone(), Some(name), reason);
            return Some(error_reply(&msg, ResponseCode::NXDomain));
        }
        let Some(_slot) = InFlight::take(&self.in_flight, &id) else {
            tracing::debug!(session = %id, %name, "dns: {MAX_IN_FLIGHT} queries at the upstream already");
            return Some(error_reply(&msg, ResponseCode::ServFail));
        };
        let Ok(upstream_query) = rebuilt(&msg) else {
            return Some(error_reply(&msg, ResponseCode::FormErr));
        };
        let raw = match self.forward(&upstream_query, tcp).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(session = %id, %name, "dns upstream: {e}");
                return Some(error_reply(&msg, ResponseCode::ServFail));
            }
        };
        let mut reply = match Message::from_vec(&raw) {
            Ok(r) if r.id() == msg.id() => r,
            _ => return Some(error_reply(&msg, ResponseCode::ServFail)),
        };
        match self.admit(&id, &policy, &name, &mut reply) {
            Ok(r) => Some(r),
            Err(Stale) => {
                tracing::debug!(session = %id, %name, "dns: the policy changed during the lookup");
                Some(error_reply(&msg, ResponseCode::ServFail))
            }
        }
    }

    /// Opens the answer's allowed addresses for the sandbox, takes the
    /// denied ones out, caps TTLs; the encoded reply. `Stale` when the
    /// sandbox's policy is no longer `policy` (some addresses may have
    /// opened before the change: the change deletes them).
    fn admit(
        &self,
        id: &str,
        policy: &Arc<NetworkPolicy>,
        name: &str,
        reply: &mut Message,
    ) -> Result<Vec<u8>, Stale> {
        let mut answers = reply.take_answers();
        let mut stale = false;
        answers.retain_mut(|rec| {
            if stale {
                return false;
            }
            rec.set_ttl(rec.ttl().min(MAX_TTL));
            let addr = match rec.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return true,
            };
            if let Err(reason) = addr_verdict(policy, &self.cfg.deny_always, addr) {
                self.deny(id, addr.to_string(), Some(name.to_string()), reason);
                return false;
            }
            let ttl = Duration::from_secs(rec.ttl().into()).max(MIN_ALLOW);
            match self.sandboxes.allow(id, addr, ttl, policy) {
                Ok(()) => true,
                Err(NotOpened::Stale) => {
                    stale = true;
                    false
                }
                Err(NotOpened::Failed(e)) => {
                    tracing::warn!(session = id, %addr, "opening a resolved address: {e}");
                    false
                }
            }
        });
        if stale {
            return Err(Stale);
        }
        reply.insert_answers(answers);
        // Addresses elsewhere in the reply (additional records) are not
        // opened: leave none a client could take for an answer.
        let extra = reply.take_additionals();
        reply.insert_additionals(
            extra
                .into_iter()
                .filter(|r| !matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                .collect(),
        );
        Ok(reply
            .to_vec()
            .unwrap_or_else(|_| error_reply(reply, ResponseCode::ServFail)))
    }

    fn deny(&self, id: &str, destination: String, name: Option<String>, reason: &str) {
        self.events.record(
            id,
            Denial {
                at: SystemTime::now(),
                destination,
                name,
                reason: reason.to_string(),
            },
        );
    }

    /// The upstream's raw answer to `query`, over the query's transport
    /// (a truncated UDP answer is passed on as such: the client retries
    /// over TCP, as it would with any resolver).
    async fn forward(&self, query: &[u8], tcp: bool) -> io::Result<Vec<u8>> {
        let up = self.cfg.upstream;
        tokio::time::timeout(UPSTREAM_TIMEOUT, async {
            if tcp {
                let mut c = TcpStream::connect(up).await?;
                write_framed(&mut c, query).await?;
                read_framed(&mut c).await
            } else {
                let bind: SocketAddr = if up.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                let s = UdpSocket::bind(bind).await?;
                s.connect(up).await?;
                s.send(query).await?;
                let mut buf = vec![0u8; UDP_MAX];
                let n = s.recv(&mut buf).await?;
                buf.truncate(n);
                Ok(buf)
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the upstream did not answer"))?
    }
}

/// The sandbox's policy changed while its query was at the upstream.
struct Stale;

/// One of a sandbox's [`MAX_IN_FLIGHT`] places at the upstream, given
/// back when dropped.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<String, usize>>,
    id: String,
}

impl<'a> InFlight<'a> {
    fn take(map: &'a Mutex<HashMap<String, usize>>, id: &str) -> Option<InFlight<'a>> {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(id.to_string()).or_default();
        if *n >= MAX_IN_FLIGHT {
            return None;
        }
        *n += 1;
        Some(InFlight {
            map,
            id: id.to_string(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// What goes upstream for `query`: its id, flags a resolver needs, its one
/// question, and its EDNS payload size and DO bit. Nothing else of what
/// the sandbox sent (other sections, options, trailing bytes) leaves.
fn rebuilt(query: &Message) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_checking_disabled(query.checking_disabled());
    m.add_queries(query.queries().to_vec());
    if let Some(e) = query.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload().clamp(512, UDP_MAX as u16))
            .set_dnssec_ok(e.flags().dnssec_ok);
        m.set_edns(edns);
    }
    m.to_vec()
}

/// A query name as policies spell names: lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An answer to `query` with `code` and nothing else.
fn error_reply(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    m.add_queries(query.queries().to_vec());
    m.to_vec().unwrap_or_default()
}

/// An answer with `code` to a query that did not parse: its id, no
/// question.
fn refusal(query: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(u16::from_be_bytes([query[0], query[1]]))
        .set_message_type(MessageType::Response)
        .set_response_code(code);
    m.to_vec().unwrap_or_default()
}

async fn read_framed(c: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = c.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    c.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(c: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    c.write_all(&out).await
}

/// Errors of `accept` that concern one connection, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
