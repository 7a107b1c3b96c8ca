//! Signed, expiring access to one port of one session: the token of a
//! shared URL (`?sandkasten_token=`) and of the cookie a browser keeps
//! after opening one.
//!
//! A token is `<expiry>.<mac>`: the expiry in Unix seconds and
//! HMAC-SHA-256 (RFC 2104) under the daemon's secret of
//! `sandkasten-port\n<session>\n<port>\n<expiry>`, in lowercase hex. It
//! names its session and port, so it opens nothing else; it cannot be
//! extended without the secret; and it survives a restart, since the
//! secret is kept in the data dir. Macs are compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The query parameter that carries a token (removed before the request
/// goes to the sandbox).
pub(crate) const QUERY_PARAM: &str = "sandkasten_token";
/// The cookie a browser keeps after opening a signed URL.
pub(crate) const COOKIE: &str = "sandkasten_port_token";
/// Longest lifetime of a signed URL: 7 days.
pub(crate) const MAX_TTL_SECONDS: u64 = 7 * 24 * 3600;

/// Signs and checks tokens with the daemon's secret.
#[derive(Clone)]
pub(crate) struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

/// HMAC-SHA-256 (RFC 2104; block size 64).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| -> [u8; 64] { block.map(|b| b ^ byte) };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Signer {
    /// A signer with `secret` (the daemon keeps 32 random bytes in its
    /// data dir). An empty secret signs nothing a check accepts.
    pub(crate) fn new(secret: &[u8]) -> Signer {
        Signer {
            secret: secret.to_vec(),
        }
    }

    fn mac(&self, session: &str, port: u16, expiry: u64) -> [u8; 32] {
        let msg = format!("sandkasten-port\n{session}\n{port}\n{expiry}");
        hmac_sha256(&self.secret, msg.as_bytes())
    }

    /// The E2B access token of `session`'s envd (`envdAccessToken`):
    /// HMAC of `sandkasten-envd\n<session>`, in hex. It opens that
    /// sandbox's envd only, and stays the same across restarts.
    pub(crate) fn envd_token(&self, session: &str) -> String {
        hex(&hmac_sha256(
            &self.secret,
            format!("sandkasten-envd\n{session}").as_bytes(),
        ))
    }

    /// The token for `session`'s `port`, valid until `expiry` (Unix s).
    pub(crate) fn sign(&self, session: &str, port: u16, expiry: u64) -> String {
        format!("{expiry}.{}", hex(&self.mac(session, port, expiry)))
    }

    /// The token's expiry when it is valid for `session`'s `port` at
    /// `now` (Unix s).
    pub(crate) fn check(&self, token: &str, session: &str, port: u16, now: u64) -> Option<u64> {
        if self.secret.is_empty() {
            return None;
        }
        let (expiry, mac) = token.split_once('.')?;
        let expiry: u64 = expiry.parse().ok()?;
        let expected = hex(&self.mac(session, port, expiry));
        let valid: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        (valid && now < expiry).then_some(expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 (a short key) and 6 (a key longer than a block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_token_opens_its_port_of_its_session_until_it_expires() {
        let s = Signer::new(b"0123456789abcdef0123456789abcdef");
        let t = s.sign("abc", 8000, 1000);
        assert_eq!(s.check(&t, "abc", 8000, 999), Some(1000));
        assert_eq!(s.check(&t, "abc", 8000, 1000), None, "expired");
        assert_eq!(s.check(&t, "abd", 8000, 10), None, "another session");
        assert_eq!(s.check(&t, "abc", 8001, 10), None, "another port");
        let longer = t.replacen("1000.", "2000.", 1);
        assert_eq!(s.check(&longer, "abc", 8000, 1500), None, "extended");
        assert_eq!(s.check("garbage", "abc", 8000, 10), None);
        assert_eq!(s.check("", "abc", 8000, 10), None);
        let other = Signer::new(b"another secret of thirty-two b..");
        assert_eq!(other.check(&t, "abc", 8000, 10), None, "another daemon");
        assert_eq!(Signer::new(b"").check(&t, "abc", 8000, 10), None);
    }
}
