//! Bearer tokens: `avt_<id>_<secret>`. The id finds the row; the SHA-256 digest of the whole
//! token is what is stored and compared (in constant time). Shown once at creation.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const PREFIX: &str = "avt_";
/// Hex characters in a token id.
const ID_HEX: usize = 12;

/// Checks the wire form without copying the token; returns the id's hex part.
pub fn check(raw: &str) -> Option<&str> {
    let (id, secret) = raw.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = id.len() == ID_HEX && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let secret_ok =
        secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

/// Characters in a token's secret (32 bytes, base64url without padding).
const SECRET_LEN: usize = 43;
/// Characters in a token's wire form.
const TOKEN_LEN: usize = PREFIX.len() + ID_HEX + 1 + SECRET_LEN;

/// Whether `text` holds a well-formed token anywhere, or a run as long as a token's secret of
/// the characters it is written in (a secret pasted without its prefix, or cut short): a revoke
/// reason must not.
pub fn holds_token(text: &str) -> bool {
    let secret_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(PREFIX).any(|(i, _)| text.get(i..i + TOKEN_LEN).and_then(check).is_some())
        || text.split(|c: char| !secret_char(c)).any(|run| run.len() >= SECRET_LEN)
}

/// A token's row id, `tk_` and its 12 hex characters, held on the stack.
#[derive(Clone, Copy)]
pub struct RowId([u8; 3 + ID_HEX]);

impl RowId {
    pub fn as_str(&self) -> &str {
        // Built only from "tk_" and characters `check` accepted (ASCII hex).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The token an `authorization` header value carries (`Bearer <token>`) and its row id,
/// without copying the token; `None` unless the header holds a well-formed token.
pub fn from_header(header: &str) -> Option<(&str, RowId)> {
    // The scheme is case-insensitive (RFC 9110).
    let token = header.get(..7).filter(|s| s.eq_ignore_ascii_case("Bearer "))?;
    let token = header[token.len()..].trim();
    let hex = check(token)?;
    let mut id = [0u8; 3 + ID_HEX];
    id[..3].copy_from_slice(b"tk_");
    id[3..].copy_from_slice(hex.as_bytes());
    Some((token, RowId(id)))
}

/// The SHA-256 digest of a token's wire form: what is stored and compared.
pub fn digest(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// A full bearer token. Debug is redacted.
pub struct Token(SecretString);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl Token {
    /// A fresh token: a random id (48 bits) and a 256-bit secret.
    pub fn generate() -> Self {
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut id);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        let text =
            zeroize::Zeroizing::new(format!("{PREFIX}{}_{}", hex::encode(id), URL_SAFE_NO_PAD.encode(secret.as_ref())));
        Self(SecretString::from(text.as_str()))
    }

    /// Accepts the wire form; anything else is `None` (and is never echoed).
    pub fn parse(raw: &str) -> Option<Self> {
        check(raw).map(|_| Self(SecretString::from(raw)))
    }

    /// The public id (`tk_` plus the hex part), as shown by `token list`.
    pub fn id(&self) -> String {
        let hex = &self.0.expose_secret()[PREFIX.len()..PREFIX.len() + ID_HEX];
        format!("tk_{hex}")
    }

    pub fn digest(&self) -> [u8; 32] {
        digest(self.0.expose_secret())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_round_trip() {
        let t = Token::generate();
        let again = Token::parse(t.expose()).unwrap();
        assert_eq!(t.id(), again.id());
        assert_eq!(t.digest(), again.digest());
        assert!(t.id().starts_with("tk_") && t.id().len() == 15);
        assert!(!format!("{t:?}").contains(&t.expose()[4..]));
        assert_ne!(Token::generate().expose(), t.expose());
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let t = Token::generate();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let header = format!("{scheme} {}", t.expose());
            assert_eq!(
                from_header(&header).map(|(token, id)| (token, id.as_str().to_owned())),
                Some((t.expose(), t.id()))
            );
        }
        assert!(from_header(&format!("Basic {}", t.expose())).is_none());
        assert!(from_header("Bearé").is_none());
    }

    #[test]
    fn a_token_is_found_inside_text() {
        let t = Token::generate();
        assert!(holds_token(&format!("leaked:{}. sorry", t.expose())));
        assert!(holds_token(&format!("cut {}", &t.expose()[..TOKEN_LEN - 1])));
        assert!(!holds_token("avt_ and avt_é"));
        // Its secret alone, without the prefix and id.
        assert!(holds_token(&format!("secret was {}", &t.expose()[TOKEN_LEN - SECRET_LEN..])));
        assert!(!holds_token("laptop retired after the 2026-11-28 incident-review_meeting"));
    }

    #[test]
    fn parse_rejects_malformed() {
        let t = Token::generate();
        let s = t.expose();
        for bad in ["", "avt_", "Bearer x", &s[..s.len() - 1], &s.replace("avt_", "avx_"), &format!("{s}x")] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
    }
}
