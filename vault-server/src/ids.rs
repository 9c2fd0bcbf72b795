//! Canonical identifiers. Every lookup, authorisation decision and AAD uses these forms.

use std::fmt;

/// Longest mailbox address accepted (RFC 5321 path limit).
const MAX_MAILBOX_LEN: usize = 254;

/// Why an identifier was refused; the message names the rule, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidId {
    pub field: &'static str,
    pub reason: &'static str,
}

/// A canonical mailbox address: trimmed, lower-cased, `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailbox(String);

/// `raw` trimmed and lower-cased; an owned ASCII string already trimmed is lower-cased in
/// place (a Reveal's hot path: no allocation).
fn trimmed_lowercase(raw: String) -> String {
    if !raw.is_ascii() {
        return raw.trim().to_lowercase();
    }
    if raw.trim().len() == raw.len() {
        let mut raw = raw;
        raw.make_ascii_lowercase();
        return raw;
    }
    raw.trim().to_ascii_lowercase()
}

impl Mailbox {
    /// Takes a `String` without copying it (or copies a `&str`).
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let bad = |reason| InvalidId { field: "mailbox", reason };
        let s = trimmed_lowercase(raw.into());
        if s.is_empty() {
            return Err(bad("must not be empty"));
        }
        if s.len() > MAX_MAILBOX_LEN {
            return Err(bad("must be at most 254 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("must not contain control characters"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(bad("must not contain spaces"));
        }
        match s.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(Self(s)),
            _ => Err(bad("must be an address of the form local@domain")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the last `@`, which selects the provider.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A canonical client id: lower case, `[a-z0-9][a-z0-9._-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Takes a `String` without copying it (or copies a `&str`).
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let bad = |reason| InvalidId { field: "client", reason };
        let mut s = raw.into();
        s.make_ascii_lowercase();
        let mut chars = s.chars();
        match chars.next() {
            None => return Err(bad("must not be empty")),
            Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
                return Err(bad("must start with a letter or digit"));
            }
            Some(_) => {}
        }
        if s.len() > 63 {
            return Err(bad("must be at most 63 characters"));
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)) {
            return Err(bad("may contain only a-z, 0-9, '.', '_' and '-'"));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A caller's id for one write, so that a retry is answered once: 1-64 of `[A-Za-z0-9_-]`
/// (a UUID fits), case kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// `None` for the empty id: the call is not idempotent.
    pub fn parse(raw: &str) -> Result<Option<Self>, InvalidId> {
        let bad = |reason| InvalidId { field: "request_id", reason };
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > 64 {
            return Err(bad("must be at most 64 characters"));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(bad("may contain only A-Z, a-z, 0-9, '-' and '_'"));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_is_trimmed_and_lowercased() {
        let m = Mailbox::parse("  Alice@Sina.COM ").unwrap();
        assert_eq!(m.as_str(), "alice@sina.com");
        assert_eq!(m.domain(), "sina.com");
    }

    #[test]
    fn an_owned_mailbox_is_canonicalised_like_a_borrowed_one() {
        for raw in
            ["alice@sina.com", "Alice@Sina.COM", " alice@sina.com\t", "\u{7528}\u{6237}@Sina.com", " \u{C9}ve@QQ.com "]
        {
            assert_eq!(Mailbox::parse(raw.to_owned()), Mailbox::parse(raw), "{raw:?}");
        }
        assert_eq!(Mailbox::parse("\u{C9}VE@qq.com").unwrap().as_str(), "\u{e9}ve@qq.com");
        assert_eq!(ClientId::parse("Sender".to_owned()).unwrap().as_str(), "sender");
    }

    #[test]
    fn mailbox_rejects_bad_forms() {
        for raw in ["", "alice", "al ice@sina.com", "a\u{7}@sina.com", "@sina.com", "alice@"] {
            assert!(Mailbox::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn request_id_rules() {
        assert_eq!(RequestId::parse("").unwrap(), None);
        let uuid = "3f2b8c1e-9a4d-4e7f-b0c2-5d6e7f8a9b0c";
        assert_eq!(RequestId::parse(uuid).unwrap().unwrap().as_str(), uuid);
        assert!(RequestId::parse(&"A".repeat(64)).unwrap().is_some());
        for raw in [&"a".repeat(65), "a b", "a/b", "ü", "x\n"] {
            assert!(RequestId::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn client_id_rules() {
        assert_eq!(ClientId::parse("Sender-1").unwrap().as_str(), "sender-1");
        assert!(ClientId::parse("a".repeat(63)).is_ok());
        for raw in ["", "-x", "a b", "a/b", &"a".repeat(64), "ü"] {
            assert!(ClientId::parse(raw).is_err(), "{raw:?} accepted");
        }
    }
}
