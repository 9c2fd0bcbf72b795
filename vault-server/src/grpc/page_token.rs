//! Opaque page tokens: a listing's name (with its filters' fingerprint) and its keyset
//! position, base64url-encoded. Each listing checks that a token is its own.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::vault::VaultError;

const VERSION: &str = "v1";

/// Encodes `fields` (which must not contain newlines) for listing `kind`.
pub fn encode(kind: &str, fields: &[&str]) -> String {
    let mut text = format!("{VERSION}\n{kind}");
    for f in fields {
        text.push('\n');
        text.push_str(f);
    }
    URL_SAFE_NO_PAD.encode(text)
}

/// The `n` fields of a token for listing `kind`; `None` for the empty token.
pub fn decode(kind: &str, token: &str, n: usize) -> Result<Option<Vec<String>>, VaultError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || VaultError::InvalidField {
        field: "page_token",
        reason: "not a token from this listing with these filters".into(),
    };
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.split('\n');
    if parts.next() != Some(VERSION) || parts.next() != Some(kind) {
        return Err(bad());
    }
    let fields: Vec<String> = parts.map(str::to_owned).collect();
    if fields.len() == n { Ok(Some(fields)) } else { Err(bad()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = encode("creds", &["a@sina.com", "sender"]);
        assert_eq!(decode("creds", &t, 2).unwrap(), Some(vec!["a@sina.com".to_owned(), "sender".to_owned()]));
        assert_eq!(decode("creds", "", 2).unwrap(), None);
        assert!(decode("creds", "!!!", 2).is_err());
        assert!(decode("audit", &t, 2).is_err(), "another listing's token");
        assert!(decode("creds", &t, 3).is_err());
    }
}
