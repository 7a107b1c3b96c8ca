//! The ports proxy: HTTP to a TCP port inside a session's sandbox, by path
//! (`/v1/sessions/{id}/ports/{port}/{path…}`) or by host name
//! (`{port}-{id}.{preview_domain}`, so a browser opens
//! `http://8000-<id>.localhost:8080/` directly).
//!
//! A middleware in front of the router picks these requests out (the path
//! form except `POST …/url`, which signs URLs; any request whose `Host` is
//! a preview host), checks access, and forwards them over a fresh
//! connection to the port (`Engine::connect_port`): any method, bodies
//! streamed both ways frame by frame (never held: hyper's client writes
//! the request body as it arrives and the response body is handed on as
//! the sandbox sends it), server-sent events as they come, and `Upgrade`
//! (WebSocket): after the server's 101 the two sockets are spliced.
//!
//! Access (see `signed.rs`): the API key (its `Authorization` header is
//! removed before forwarding: a sandbox never sees the key), a signed
//! token in the query (removed; the answer sets a cookie scoped to that
//! port: host-only on a preview host, path `/v1/sessions/{id}/ports/{port}/`
//! on the path form), or that cookie. The cookie is removed from `Cookie`
//! however access was given (the app's own cookies pass byte for byte).
//! Without access: 401 before anything else, so ids cannot be probed.

pub(crate) mod signed;

use crate::auth::ApiKey;
use crate::backend::Backend;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use signed::Signer;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the proxy needs: the engine, the key, the signer and the preview
/// domain.
pub(crate) struct Ports {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) key: Arc<ApiKey>,
    pub(crate) signer: Signer,
    /// `localhost:8080` by default: hosts `{port}-{id}.` + this.
    pub(crate) preview_domain: String,
    /// Upgraded connections (WebSocket) through the proxy: each holds two
    /// descriptors (the client's, the server's) with no idle timeout and
    /// outside the serve loop's connection table, so they have a budget
    /// of their own ([`upgrade_budget`]); past it an upgrade is 503.
    pub(crate) upgrades: Arc<tokio::sync::Semaphore>,
}

/// How many upgraded connections the proxy keeps at once for a process
/// that may open `nofile` descriptors: a quarter of the serve loop's
/// connection budget (an eighth of the descriptors, a quarter with their
/// second ends), so that a holder of one signed URL cannot take the
/// descriptors that every other client needs.
pub(crate) fn upgrade_budget(nofile: u64) -> usize {
    (crate::conn::ConnLimits::for_fd_limit(nofile).max_connections / 4).max(1)
}

/// A request for a sandbox port, as parsed from its path or host.
#[derive(Debug, PartialEq)]
struct Target {
    session: String,
    /// As written; checked after access (a bad one is 400 for a client
    /// with access, 401 for one without).
    port: String,
    /// Path and query to send to the server inside.
    upstream: String,
    /// Where the access cookie applies.
    cookie_path: String,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The preview host `host` names (`{port}-{id}.{domain}`), if it is one.
fn parse_host(host: &str, domain: &str) -> Option<(String, String)> {
    let host = host.to_ascii_lowercase();
    let label = host
        .strip_suffix(&domain.to_ascii_lowercase())?
        .strip_suffix('.')?;
    let (port, session) = label.split_once('-')?;
    (!session.is_empty() && !session.contains('.')).then(|| (session.into(), port.into()))
}

/// `/v1/sessions/{id}/ports/{port}[/rest]` → (id, port, rest).
fn parse_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/v1/sessions/")?;
    let (session, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("ports/")?;
    let (port, rest) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    (!session.is_empty() && !port.is_empty()).then_some((session, port, rest))
}

impl Ports {
    fn target(&self, req: &Request) -> Option<Target> {
        let uri = req.uri();
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Some(host) = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            if let Some((session, port)) = parse_host(host, &self.preview_domain) {
                return Some(Target {
                    session,
                    port,
                    upstream: format!("{}{query}", uri.path()),
                    cookie_path: "/".into(),
                });
            }
        }
        let (session, port, rest) = parse_path(uri.path())?;
        if rest == "/url" && req.method() == Method::POST {
            return None; // the signing route
        }
        let rest = if rest.is_empty() { "/" } else { rest };
        Some(Target {
            session: session.into(),
            port: port.into(),
            upstream: format!("{rest}{query}"),
            cookie_path: format!("/v1/sessions/{session}/ports/{port}/"),
        })
    }
}

/// How a request got in.
enum Access {
    Key,
    /// A signed token in the query: the answer sets the cookie.
    Token {
        token: String,
        expiry: u64,
    },
    Cookie,
}

/// Splits `sandkasten_token` out of `upstream`'s query.
fn take_token(upstream: &mut String) -> Option<String> {
    let (path, query) = upstream.split_once('?')?;
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some((k, v)) if k == signed::QUERY_PARAM => {
                token = Some(v.to_string());
                false
            }
            _ => true,
        })
        .collect();
    let token = token?;
    *upstream = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    Some(token)
}

/// Every value of cookie `name` in `headers`.
/// Read as bytes: another cookie that is not ASCII (an app's UTF-8 value)
/// must not hide ours.
fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let at = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (&pair[..at], &pair[at + 1..]);
            (k.trim_ascii() == name.as_bytes())
                .then(|| std::str::from_utf8(v.trim_ascii()).ok())
                .flatten()
                .map(str::to_string)
        })
        .collect()
}

/// Removes cookie `name` from every `Cookie` header of `headers`. A header
/// without it stays as sent; one with it keeps the other cookies' bytes
/// (joined by `; `), and goes if nothing is left.
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let is_ours = |pair: &[u8]| {
        let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
        key.trim_ascii() == name.as_bytes()
    };
    let has_ours = |v: &HeaderValue| v.as_bytes().split(|b| *b == b';').any(is_ours);
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if !values.iter().any(has_ours) {
        return;
    }
    headers.remove(header::COOKIE);
    for value in values {
        if !has_ours(&value) {
            headers.append(header::COOKIE, value);
            continue;
        }
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| !pair.is_empty() && !is_ours(pair))
            .collect();
        if kept.is_empty() {
            continue;
        }
        // The bytes come from a valid header value: still valid.
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(header::COOKIE, v);
        }
    }
}

impl Ports {
    /// Checks access and strips what the sandbox must not see: the key's
    /// `Authorization` header and our cookie, however access was given (a
    /// browser that opens a signed URL again sends the cookie with it).
    fn authorize(&self, req: &mut Request, t: &mut Target, port: Option<u16>) -> Option<Access> {
        let access = self.check_access(req, t, port)?;
        if let Access::Key = access {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        // E2B's header for the key: never to a sandbox either, however
        // access was given.
        if self.key.verify_header(req.headers(), "x-api-key") {
            req.headers_mut().remove("x-api-key");
        }
        remove_cookie(req.headers_mut(), signed::COOKIE);
        Some(access)
    }

    fn check_access(&self, req: &Request, t: &mut Target, port: Option<u16>) -> Option<Access> {
        if self.key.verify(req.headers()) {
            return Some(Access::Key);
        }
        let port = port?;
        let now = now_unix();
        if let Some(token) = take_token(&mut t.upstream) {
            let expiry = self.signer.check(&token, &t.session, port, now)?;
            return Some(Access::Token { token, expiry });
        }
        cookie_values(req.headers(), signed::COOKIE)
            .iter()
            .any(|c| self.signer.check(c, &t.session, port, now).is_some())
            .then_some(Access::Cookie)
    }
}

/// Middleware in front of the router: serves ports requests, passes the
/// rest on.
pub(crate) async fn dispatch(
    State(ports): State<Arc<Ports>>,
    req: Request,
    next: Next,
) -> Response {
    match ports.target(&req) {
        Some(target) => serve_target(&ports, target, req).await,
        None => next.run(req).await,
    }
}

/// Serves a ports request that reached the router (only in tests that
/// call the router's route directly).
pub(crate) async fn serve(ports: &Ports, req: Request) -> Response {
    match ports.target(&req) {
        Some(target) => serve_target(ports, target, req).await,
        None => ApiError::RouteNotFound {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
        }
        .into_response(),
    }
}

async fn serve_target(ports: &Ports, mut target: Target, mut req: Request) -> Response {
    let port = crate::routes::ports::parse_port(&target.port);
    let Some(access) = ports.authorize(&mut req, &mut target, port.as_ref().ok().copied()) else {
        return ApiError::Unauthorized.into_response();
    };
    crate::conn::mark_authenticated(&req);
    let port = match port {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mut resp = match forward(ports, &target, port, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Access::Token { token, expiry } = access {
        let max_age = expiry.saturating_sub(now_unix());
        let cookie = format!(
            "{}={token}; Max-Age={max_age}; Path={}; HttpOnly; SameSite=Lax",
            signed::COOKIE,
            target.cookie_path
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Drops the `Domain` attribute of every cookie an app sets: its cookies
/// are its host's alone. On a preview host (`{port}-{id}.` + the preview
/// domain) that host is the session's and port's own, and a `Domain` of
/// the preview domain would reach every other session's hosts (session
/// 15's attack: `Domain=localhost` passed as sent).
fn host_only_cookies(headers: &mut HeaderMap) {
    let is_domain = |attr: &[u8]| {
        let name = attr.split(|b| *b == b'=').next().unwrap_or_default();
        name.trim_ascii().eq_ignore_ascii_case(b"domain")
    };
    let values: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if !values
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b';').skip(1).any(is_domain))
    {
        return;
    }
    headers.remove(header::SET_COOKIE);
    for value in values {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .enumerate()
            .filter(|(i, attr)| *i == 0 || !is_domain(attr))
            .map(|(_, attr)| attr)
            .collect();
        // Bytes of a valid header value, joined by `;`: still valid.
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b";"[..])) {
            headers.append(header::SET_COOKIE, v);
        }
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never forwarded; `Connection` and
/// `Upgrade` are put back for an upgrade.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `Upgrade` value of a request that asks for one.
fn wanted_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Sends `req` to `port` of the target's session over a new connection and
/// answers what the server answers.
async fn forward(
    ports: &Ports,
    target: &Target,
    port: u16,
    mut req: Request,
) -> Result<Response, ApiError> {
    if req.method() == Method::CONNECT {
        return Err(ApiError::InvalidRequest(
            "CONNECT is not proxied: the proxy speaks HTTP to the port".into(),
        ));
    }
    let mut upgrade = wanted_upgrade(req.headers());
    let permit = match &upgrade {
        Some(u) => match ports.upgrades.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            // An upgrade a plain answer serves as well (`h2c`): asked
            // without it.
            Err(_) if !u.as_bytes().eq_ignore_ascii_case(b"websocket") => {
                upgrade = None;
                None
            }
            Err(_) => {
                return Err(ApiError::Engine(
                    sandkasten_engine::SessionError::RuntimeCapacity(
                        "the ports proxy holds as many upgraded connections (WebSocket) as \
                         the daemon's descriptors allow; try again when one ends"
                            .into(),
                    )
                    .into(),
                ))
            }
        },
        None => None,
    };
    let stream = ports.backend.connect_port(&target.session, port).await?;
    let upstream_err = |e: hyper::Error| ApiError::Upstream {
        port,
        message: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
        .map_err(upstream_err)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("sandbox port connection ended: {e}");
        }
    });

    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = target
        .upstream
        .parse::<Uri>()
        .map_err(|e| ApiError::InvalidRequest(format!("invalid path: {e}")))?;
    parts.version = axum::http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }
    // Extensions of the daemon's own connection stay here.
    parts.extensions = Default::default();
    let mut resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(upstream_err)?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::Upstream {
                port,
                message: "switched protocols without being asked to".into(),
            });
        };
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            // Held until both ends are closed.
            let _permit = permit;
            match tokio::try_join!(client_upgrade, server_upgrade) {
                Ok((client, server)) => {
                    let mut client = TokioIo::new(client);
                    let mut server = TokioIo::new(server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => tracing::debug!("upgrade through the ports proxy failed: {e}"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        let (connection, upgrade) = (
            parts.headers.remove(header::CONNECTION),
            parts.headers.remove(header::UPGRADE),
        );
        strip_hop_by_hop(&mut parts.headers);
        // A handshake's cookies count as any answer's.
        host_only_cookies(&mut parts.headers);
        if let (Some(c), Some(u)) = (connection, upgrade) {
            parts.headers.insert(header::CONNECTION, c);
            parts.headers.insert(header::UPGRADE, u);
        }
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = resp.into_parts();
    // A server that sent both framed its body by the transfer coding
    // (RFC 9112 §6.3): its length no longer says where the body ends.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers);
    host_only_cookies(&mut parts.headers);
    // The app's own `Allow`, whatever the router adds on the way out.
    let app_allow = parts.headers.get(header::ALLOW).cloned();
    parts.extensions.insert(crate::auth::AppAllow(app_allow));
    // The daemon speaks HTTP/1.1 to its client whatever the server inside
    // spoke (an HTTP/1.0 server's answer would end the keep-alive).
    parts.version = axum::http::Version::HTTP_11;
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_hosts_name_a_port_and_a_session() {
        let d = "localhost:8080";
        assert_eq!(
            parse_host("8000-abc.localhost:8080", d),
            Some(("abc".into(), "8000".into()))
        );
        assert_eq!(
            parse_host("8000-ABC.LocalHost:8080", d),
            Some(("abc".into(), "8000".into()))
        );
        assert_eq!(parse_host("localhost:8080", d), None);
        assert_eq!(parse_host("8000-abc.localhost:8081", d), None);
        assert_eq!(parse_host("8000-abc.evil.localhost:8080", d), None);
        assert_eq!(parse_host("8000abc.localhost:8080", d), None);
        assert_eq!(
            parse_host("x-abc.localhost:8080", d),
            Some(("abc".into(), "x".into())),
            "a bad port is the proxy's 400, not another route"
        );
    }

    #[test]
    fn ports_paths_split_into_session_port_and_rest() {
        assert_eq!(
            parse_path("/v1/sessions/s1/ports/80/a/b"),
            Some(("s1", "80", "/a/b"))
        );
        assert_eq!(
            parse_path("/v1/sessions/s1/ports/80"),
            Some(("s1", "80", ""))
        );
        assert_eq!(
            parse_path("/v1/sessions/s1/ports/80/"),
            Some(("s1", "80", "/"))
        );
        assert_eq!(parse_path("/v1/sessions/s1/ports/"), None);
        assert_eq!(parse_path("/v1/sessions/s1/exec"), None);
        assert_eq!(parse_path("/v1/sessions//ports/80"), None);
    }

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        let mut u = "/a?x=1&sandkasten_token=t.1&y=2".to_string();
        assert_eq!(take_token(&mut u).as_deref(), Some("t.1"));
        assert_eq!(u, "/a?x=1&y=2");
        let mut u = "/?sandkasten_token=t".to_string();
        assert_eq!(take_token(&mut u).as_deref(), Some("t"));
        assert_eq!(u, "/");
        let mut u = "/?x=1".to_string();
        assert_eq!(take_token(&mut u), None);
        assert_eq!(u, "/?x=1");
    }

    #[test]
    fn an_apps_cookies_lose_their_domain() {
        let mut h = HeaderMap::new();
        for v in [
            "a=1; Domain=localhost; Path=/",
            "b=2; Path=/x; domain = .localhost ;HttpOnly",
            "c=domain=x; Secure",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        host_only_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            left,
            ["a=1; Path=/", "b=2; Path=/x;HttpOnly", "c=domain=x; Secure"]
        );
    }

    #[test]
    fn our_cookie_is_found_and_removed_leaving_the_apps_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1;sandkasten_port_token=t1"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sandkasten_port_token=t2; b=\"x y\"; c=%FF=="),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sandkasten_port_token=t3"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"d=\xe9t\xe9 ;  e=2").unwrap(),
        );
        // An app's cookie that is not ASCII before ours hides nothing.
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes("name=J\u{fc}rgen; sandkasten_port_token=t4".as_bytes())
                .unwrap(),
        );
        assert_eq!(cookie_values(&h, signed::COOKIE), ["t1", "t2", "t3", "t4"]);
        remove_cookie(&mut h, signed::COOKIE);
        let left: Vec<&[u8]> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            left,
            [
                &b"a=1"[..],
                b"b=\"x y\"; c=%FF==",
                b"d=\xe9t\xe9 ;  e=2",
                "name=J\u{fc}rgen".as_bytes()
            ],
            "a header without ours stays as sent"
        );
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sandkasten_port_token=t"),
        );
        remove_cookie(&mut h, signed::COOKIE);
        assert!(h.get(header::COOKIE).is_none());
    }
}
