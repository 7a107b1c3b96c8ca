//! The Connect protocol (<https://connectrpc.com/docs/protocol>) as envd
//! serves it over HTTP/1.1: both codecs, unary calls, server streams and
//! client streams, its error codes and its end-of-stream message.
//!
//! - **Unary**: `POST /pkg.Service/Method` with `Content-Type:
//!   application/json` or `application/proto`; the answer is the message
//!   in the same codec, or an error: the code's HTTP status and a JSON
//!   body `{"code": "not_found", "message": "…"}`.
//! - **Streams**: `application/connect+json` or `application/connect+proto`.
//!   Each message is an envelope: one flags byte, a 4-byte big-endian
//!   length, the encoded message. The server's answer is HTTP 200 and
//!   envelopes; the last one has flag `0x02` (end of stream) and holds a
//!   JSON object, with `error` when the call failed.
//!
//! Bad input is answered in the protocol's own terms, never by a crash: a
//! content type of neither codec is HTTP 415 (the client cannot read any
//! other answer), an unknown method `unimplemented` (HTTP 404), a message
//! or envelope that does not decode `invalid_argument`, a compressed
//! envelope (we accept no compression) `unimplemented`, a message over
//! [`MAX_MESSAGE_BYTES`] `resource_exhausted`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message (encoded) a call may send: envd's messages are small
/// (paths, stdin pieces); a larger one is `resource_exhausted`.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A message both codecs carry: prost for the binary form, serde for the
/// protobuf JSON mapping (see `pb`).
pub trait Msg: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static {}
impl<T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static> Msg for T {}

/// The two codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

/// How a call is framed, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub codec: Codec,
    /// Enveloped (`application/connect+…`): a streaming call.
    pub streaming: bool,
}

/// Connect error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (the protocol's
    /// table).
    pub fn http_status(self) -> StatusCode {
        let n = match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A failed call: a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }

    /// The answer to a unary call that failed (also used before a
    /// streaming call is understood, e.g. an unknown method).
    pub fn unary_response(&self) -> Response {
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            self.json().to_string(),
        )
            .into_response()
    }
}

/// The framing a request's content type names; `None` for anything else.
pub fn framing(headers: &HeaderMap) -> Option<Framing> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim().to_ascii_lowercase();
    let (codec, streaming) = match ct.as_str() {
        "application/json" => (Codec::Json, false),
        "application/proto" => (Codec::Proto, false),
        "application/connect+json" => (Codec::Json, true),
        "application/connect+proto" => (Codec::Proto, true),
        _ => return None,
    };
    Some(Framing { codec, streaming })
}

/// The answer to a request whose content type is no Connect codec.
pub fn unsupported_media_type() -> Response {
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        [(
            axum::http::HeaderName::from_static("accept-post"),
            "application/json, application/proto, application/connect+json, application/connect+proto",
        )],
        "",
    )
        .into_response()
}

fn content_type(f: Framing) -> &'static str {
    match (f.codec, f.streaming) {
        (Codec::Json, false) => "application/json",
        (Codec::Proto, false) => "application/proto",
        (Codec::Json, true) => "application/connect+json",
        (Codec::Proto, true) => "application/connect+proto",
    }
}

/// Decodes one message.
pub fn decode<T: Msg>(codec: Codec, data: &[u8]) -> Result<T, RpcError> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(too_large(data.len()));
    }
    match codec {
        // An empty body is the empty message in either codec.
        Codec::Json if data.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        Codec::Json => serde_json::from_slice(data).map_err(|e| {
            RpcError::new(
                Code::InvalidArgument,
                format!("the message is not valid protobuf JSON: {e}"),
            )
        }),
        Codec::Proto => T::decode(data).map_err(|e| {
            RpcError::new(
                Code::InvalidArgument,
                format!("the message is not valid protobuf: {e}"),
            )
        }),
    }
}

/// Encodes one message.
pub fn encode<T: Msg>(codec: Codec, msg: &T) -> Vec<u8> {
    match codec {
        // Our messages are plain data: serializing them cannot fail.
        Codec::Json => serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
        Codec::Proto => msg.encode_to_vec(),
    }
}

fn too_large(n: usize) -> RpcError {
    RpcError::new(
        Code::ResourceExhausted,
        format!("a message of {n} bytes is over the limit of {MAX_MESSAGE_BYTES}"),
    )
}

/// Reads a unary request's body (at most one message's worth).
pub async fn read_unary<T: Msg>(codec: Codec, body: Body) -> Result<T, RpcError> {
    let data = axum::body::to_bytes(body, MAX_MESSAGE_BYTES + 1)
        .await
        .map_err(|_| too_large(MAX_MESSAGE_BYTES + 1))?;
    decode(codec, &data)
}

/// The answer to a unary call.
pub fn unary<T: Msg>(f: Framing, result: Result<T, RpcError>) -> Response {
    match result {
        Ok(msg) => (
            [(header::CONTENT_TYPE, content_type(f))],
            encode(f.codec, &msg),
        )
            .into_response(),
        Err(e) => e.unary_response(),
    }
}

/// A unary call: its request decoded, `handler` run, its answer encoded.
pub async fn serve_unary<Req, Resp, F, Fut>(f: Framing, body: Body, handler: F) -> Response
where
    Req: Msg,
    Resp: Msg,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, RpcError>>,
{
    let result = match read_unary::<Req>(f.codec, body).await {
        Ok(req) => handler(req).await,
        Err(e) => Err(e),
    };
    unary(f, result)
}

/// Flags of an envelope.
const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END_STREAM: u8 = 0x02;

/// One envelope around `data`.
pub fn envelope(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The enveloped messages of a streaming request body, read as they come.
pub struct Envelopes {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    codec: Codec,
    done: bool,
}

impl Envelopes {
    pub fn new(codec: Codec, body: Body) -> Envelopes {
        Envelopes {
            body: body.into_data_stream(),
            buf: Vec::new(),
            codec,
            done: false,
        }
    }

    /// The next message; `None` at the end of the body. A malformed or
    /// oversized envelope is an error, after which nothing more is read.
    pub async fn next<T: Msg>(&mut self) -> Option<Result<T, RpcError>> {
        if self.done {
            return None;
        }
        let r = self.read_one().await;
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r.map(|r| r.and_then(|data| decode(self.codec, &data)))
    }

    async fn read_one(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if flags & FLAG_COMPRESSED != 0 {
                    return Some(Err(RpcError::new(
                        Code::Unimplemented,
                        "compressed messages are not accepted (send them uncompressed)",
                    )));
                }
                if flags & !FLAG_COMPRESSED != 0 {
                    return Some(Err(RpcError::new(
                        Code::InvalidArgument,
                        format!("an envelope with unknown flags {flags:#04x}"),
                    )));
                }
                if len > MAX_MESSAGE_BYTES {
                    return Some(Err(too_large(len)));
                }
                if self.buf.len() >= 5 + len {
                    let data = self.buf[5..5 + len].to_vec();
                    self.buf.drain(..5 + len);
                    return Some(Ok(data));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Some(Err(RpcError::new(
                        Code::Canceled,
                        format!("reading the request: {e}"),
                    )))
                }
                None if self.buf.is_empty() => return None,
                None => {
                    return Some(Err(RpcError::new(
                        Code::InvalidArgument,
                        format!(
                            "the body ends inside an envelope ({} bytes left over)",
                            self.buf.len()
                        ),
                    )))
                }
            }
        }
    }
}

/// The end-of-stream envelope: `{}` or `{"error": {...}}`.
pub fn end_stream(error: Option<&RpcError>) -> Vec<u8> {
    let body = match error {
        Some(e) => serde_json::json!({"error": e.json()}),
        None => serde_json::json!({}),
    };
    envelope(FLAG_END_STREAM, body.to_string().as_bytes())
}

/// The answer to a streaming call: each message as it comes, then the
/// end of the stream (with the first error, which ends it).
pub fn stream<T, S>(f: Framing, messages: S) -> Response
where
    T: Msg,
    S: Stream<Item = Result<T, RpcError>> + Send + 'static,
{
    let codec = f.codec;
    let body = futures::stream::unfold(
        (Box::pin(messages), false),
        move |(mut messages, ended)| async move {
            if ended {
                return None;
            }
            let (bytes, ended) = match messages.next().await {
                Some(Ok(msg)) => (envelope(0, &encode(codec, &msg)), false),
                Some(Err(e)) => (end_stream(Some(&e)), true),
                None => (end_stream(None), true),
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(bytes)),
                (messages, ended),
            ))
        },
    );
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(f)),
    );
    resp
}

/// A streaming call that failed before its first message.
pub fn stream_error(f: Framing, e: RpcError) -> Response {
    stream::<crate::pb::Empty, _>(f, futures::stream::iter([Err(e)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{EntryInfo, FileType, ListDirRequest, StatRequest};

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    #[test]
    fn content_types_name_the_codec_and_framing() {
        let f = |ct| framing(&headers(ct));
        assert_eq!(
            f("application/json; charset=utf-8"),
            Some(Framing {
                codec: Codec::Json,
                streaming: false
            })
        );
        assert_eq!(
            f("application/connect+proto"),
            Some(Framing {
                codec: Codec::Proto,
                streaming: true
            })
        );
        assert_eq!(f("application/grpc"), None);
        assert_eq!(f("text/plain"), None);
        assert_eq!(framing(&HeaderMap::new()), None);
    }

    #[test]
    fn both_codecs_roundtrip_and_json_follows_the_protobuf_mapping() {
        let req = ListDirRequest {
            path: "/workspace".into(),
            depth: 2,
        };
        for codec in [Codec::Json, Codec::Proto] {
            let back: ListDirRequest = decode(codec, &encode(codec, &req)).unwrap();
            assert_eq!(back, req);
        }
        // Proto field names and lowerCamelCase are both accepted; unknown
        // fields are ignored.
        let r: StatRequest = decode(Codec::Json, br#"{"path": "/a", "future": 1}"#).unwrap();
        assert_eq!(r.path, "/a");
        let e = EntryInfo {
            name: "a".into(),
            r#type: FileType::Directory as i32,
            size: 5_000_000_000,
            symlink_target: None,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(Codec::Json, &e)).unwrap();
        assert_eq!(v["type"], "FILE_TYPE_DIRECTORY");
        assert_eq!(v["size"], "5000000000");
        assert!(v.get("symlinkTarget").is_none());
        let back: EntryInfo = decode(Codec::Json, &encode(Codec::Json, &e)).unwrap();
        assert_eq!(back, e);
        // Enum numbers and int64 as numbers are accepted too.
        let n: EntryInfo = decode(Codec::Json, br#"{"type": 3, "size": 7}"#).unwrap();
        assert_eq!((n.r#type, n.size), (FileType::Symlink as i32, 7));
    }

    #[test]
    fn malformed_messages_are_invalid_argument() {
        for (codec, data) in [
            (Codec::Json, &b"{"[..]),
            (Codec::Json, br#"{"path": 5}"#),
            (Codec::Json, br#"{"depth": -1}"#),
            (Codec::Proto, &[0x0a, 0x05, b'a'][..]),
            (Codec::Proto, &[0xff, 0xff, 0xff][..]),
        ] {
            let e = decode::<ListDirRequest>(codec, data).unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{data:?}");
        }
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            decode::<ListDirRequest>(Codec::Json, &big)
                .unwrap_err()
                .code,
            Code::ResourceExhausted
        );
    }

    async fn read_all(body: Vec<u8>) -> Vec<Result<StatRequest, RpcError>> {
        let mut env = Envelopes::new(Codec::Json, Body::from(body));
        let mut out = Vec::new();
        while let Some(m) = env.next::<StatRequest>().await {
            out.push(m);
        }
        out
    }

    #[tokio::test]
    async fn envelopes_are_read_and_bad_ones_end_the_stream_with_a_code() {
        let mut body = envelope(0, br#"{"path":"/a"}"#);
        body.extend(envelope(0, br#"{"path":"/b"}"#));
        let got = read_all(body.clone()).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap().path, "/b");

        let cases: Vec<(Vec<u8>, Code)> = vec![
            ([&body[..], &[0, 0, 0]].concat(), Code::InvalidArgument),
            (envelope(FLAG_COMPRESSED, b"x"), Code::Unimplemented),
            (envelope(0x80, b"{}"), Code::InvalidArgument),
            (
                [&[0u8][..], &(u32::MAX).to_be_bytes()].concat(),
                Code::ResourceExhausted,
            ),
            (envelope(0, b"not json"), Code::InvalidArgument),
        ];
        for (body, code) in cases {
            let got = read_all(body).await;
            let last = got.last().unwrap().as_ref().unwrap_err();
            assert_eq!(last.code, code, "{last:?}");
        }
    }

    #[tokio::test]
    async fn a_stream_ends_with_the_end_stream_message() {
        let f = Framing {
            codec: Codec::Json,
            streaming: true,
        };
        let resp = stream(
            f,
            futures::stream::iter([
                Ok(StatRequest { path: "/a".into() }),
                Err(RpcError::new(Code::NotFound, "gone")),
                Ok(StatRequest {
                    path: "/never".into(),
                }),
            ]),
        );
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let first_len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(body[0], 0);
        let rest = &body[5 + first_len..];
        assert_eq!(rest[0], FLAG_END_STREAM);
        let end: serde_json::Value = serde_json::from_slice(&rest[5..]).unwrap();
        assert_eq!(end["error"]["code"], "not_found");
        assert_eq!(
            RpcError::new(Code::Unimplemented, "x")
                .unary_response()
                .status(),
            501
        );
    }
}
