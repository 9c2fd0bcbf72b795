//! Opaque page tokens: the last (mailbox, client) of a page, base64url-encoded with a version tag.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::vault::VaultError;

const PREFIX: &str = "v1\n";

pub fn encode((mailbox, client): &(String, String)) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PREFIX}{mailbox}\n{client}"))
}

pub fn decode(token: &str) -> Result<Option<(String, String)>, VaultError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || VaultError::InvalidField { field: "page_token", reason: "not a token from this service".into() };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (mailbox, client) = text.strip_prefix(PREFIX).and_then(|t| t.split_once('\n')).ok_or_else(bad)?;
    Ok(Some((mailbox.to_owned(), client.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let key = ("a@sina.com".to_owned(), "sender".to_owned());
        assert_eq!(decode(&encode(&key)).unwrap(), Some(key));
        assert_eq!(decode("").unwrap(), None);
        assert!(decode("!!!").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("v2\nx\ny")).is_err());
    }
}
