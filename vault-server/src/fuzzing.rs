//! Fuzz entry points: each takes untrusted bytes the way the server meets them and panics only
//! when an invariant breaks. `fuzz/` drives them with cargo-fuzz (libFuzzer); the test suite
//! replays `fuzz/corpus` and a stream of generated inputs through them. Not an API.

use std::sync::{Arc, OnceLock};

use prost::Message as _;
use rusqlite::types::Value;

use crate::auth::{Role, Token, check_token, rekey, token_from_header};
use crate::crypto::{Key, Keyring};
use crate::grpc::{audit_query, credentials_query, unused_query};
use crate::ids::{ClientId, Mailbox, RequestId};
use crate::outcome::ProbeOutcome;
use crate::proto;
use crate::provider::Registry;
use crate::secret::AuthCode;
use crate::store::{PLANTABLE_TABLES, plant_and_read};
use crate::vault::request_row_is_authentic;
use crate::vault::review::MAX_PAGE_SIZE;

/// A fuzz target: panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name its `fuzz/fuzz_targets/<name>.rs` and corpus directory use.
pub const TARGETS: [(&str, Target); 7] = [
    ("identifiers", identifiers),
    ("auth_codes", auth_codes),
    ("listing_requests", listing_requests),
    ("bearer_tokens", bearer_tokens),
    ("providers_toml", providers_toml),
    ("stored_rows", stored_rows),
    ("imap_answers", imap_answers),
];

/// Mailbox, client and request identifiers: an accepted one is canonical (parsing it again
/// gives it back) and keeps the rules every lookup, AAD and fingerprint relies on.
pub fn identifiers(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    if let Ok(m) = Mailbox::parse(raw.as_ref()) {
        let s = m.as_str();
        assert!(s.len() <= 254 && !s.chars().any(|c| c.is_control() || c.is_whitespace()), "{s:?}");
        assert!(!m.domain().is_empty() && s.contains('@'), "{s:?}");
        assert_eq!(Mailbox::parse(s).as_ref(), Ok(&m), "not canonical");
    }
    if let Ok(c) = ClientId::parse(raw.as_ref()) {
        let s = c.as_str();
        assert!((1..=63).contains(&s.len()), "{s:?}");
        assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)), "{s:?}");
        assert_eq!(ClientId::parse(s).as_ref(), Ok(&c), "not canonical");
    }
    if let Ok(Some(r)) = RequestId::parse(&raw) {
        let s = r.as_str();
        assert!((1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)));
        assert_eq!(s, raw, "a request id is kept as sent");
    }
}

/// Auth codes: a code any provider's format accepts is printable ASCII with no space, so it
/// cannot break out of the IMAP LOGIN or SMTP AUTH line it is sent in.
pub fn auth_codes(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let code = AuthCode::new(&raw);
    assert!(!code.expose().contains(' '));
    for p in registry().providers() {
        if p.code_format.accepts(&code) {
            assert!(code.expose().bytes().all(|b| b.is_ascii_graphic()), "{} accepted a non-graphic code", p.id);
            assert!(!code.expose().is_empty(), "{} accepted an empty code", p.id);
        }
    }
}

/// The three listing requests as they arrive on the wire (the first byte picks one): filters,
/// page sizes, page tokens, durations and timestamps give a bounded, canonical query or an error.
pub fn listing_requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let check_filter = |f: &Option<String>, canonical: fn(&str) -> Option<String>| {
        if let Some(f) = f {
            assert_eq!(canonical(f).as_ref(), Some(f), "filter not canonical");
        }
    };
    let mailbox = |s: &str| Mailbox::parse(s).ok().map(|m| m.as_str().to_owned());
    let client = |s: &str| ClientId::parse(s).ok().map(|c| c.as_str().to_owned());
    match which % 3 {
        0 => {
            let Ok(req) = proto::ListCredentialsRequest::decode(body) else { return };
            if let Ok(q) = credentials_query(&req, 1_800_000_000_000) {
                assert!((1..=MAX_PAGE_SIZE).contains(&q.limit));
                check_filter(&q.mailbox, mailbox);
                check_filter(&q.client, client);
            }
        }
        1 => {
            let Ok(req) = proto::ListUnusedClientsRequest::decode(body) else { return };
            if let Ok(q) = unused_query(&req, 1_800_000_000_000) {
                assert!((1..=MAX_PAGE_SIZE).contains(&q.limit));
                check_filter(&q.mailbox, mailbox);
                if req.page_token.is_empty() {
                    assert!(q.cutoff <= 1_800_000_000_000, "a cut-off in the future");
                }
            }
        }
        _ => {
            let Ok(req) = proto::ListAuditEventsRequest::decode(body) else { return };
            if let Ok(q) = audit_query(&req) {
                assert!((1..=MAX_PAGE_SIZE).contains(&q.limit));
                check_filter(&q.mailbox, mailbox);
                check_filter(&q.client, client);
            }
        }
    }
}

/// The `authorization` header: a value yields a token exactly when an independent reading of
/// the wire form (`Bearer avt_<12 lower-case hex>_<43 base64url>`) does, and the row id it names
/// is the token's own.
pub fn bearer_tokens(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    let expected = header.strip_prefix("Bearer ").map(str::trim).filter(|t| {
        let b = t.as_bytes();
        b.len() == 60
            && t.starts_with("avt_")
            && b[4..16].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && b[16] == b'_'
            && b[17..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
    });
    let got = token_from_header(&header);
    assert_eq!(got.map(|(t, _)| t), expected, "{header:?}");
    if let Some((token, id)) = got {
        assert_eq!(id.as_str(), format!("tk_{}", &token[4..16]));
        assert_eq!(Token::parse(token).map(|t| t.id()).as_deref(), Some(id.as_str()));
        assert!(check_token(token).is_some());
    }
}

/// The `--providers` file: an error is one line; an accepted file gives a registry in which
/// every domain belongs to exactly the provider that lists it. (A built-in provider whose
/// domains all moved to another table is left with none, and probes nothing: valid.)
pub fn providers_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Registry::from_toml(text) {
        Err(e) => assert!(!e.contains('\n') && !e.is_empty(), "{e:?}"),
        Ok(registry) => {
            for p in registry.providers() {
                for d in &p.domains {
                    assert_eq!(registry.lookup(d).map(|q| q.id.as_str()), Some(p.id.as_str()), "{d}");
                }
            }
        }
    }
}

/// What an IMAP server answers a probe (a hostile provider, or anyone on its path), the first
/// byte choosing Sina (LOGIN) or NetEase (LOGIN, ID, EXAMINE): the probe ends, reads within its
/// bounds, calls a code ACCEPTED only after the server completed LOGIN (and EXAMINE) with OK,
/// and the reply it reports (sanitised, as every report is) never holds the code, even when the
/// server echoes it.
pub fn imap_answers(data: &[u8]) {
    use tokio::io::AsyncWriteExt as _;
    const CODE: &str = "FUZZcode12345678";
    let Some((&choice, answers)) = data.split_first() else { return };
    let answers = &answers[..answers.len().min(256 * 1024)];
    let domain = if choice % 2 == 0 { "sina.com" } else { "163.com" };
    let registry = Registry::builtin();
    let Some(provider) = registry.lookup(domain) else { return };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_time().build() else { return };
    let probed = runtime.block_on(async {
        // The server's side: everything it will ever say, then end of stream; the probe's
        // commands land in the rest of the buffer.
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        // The buffer holds them all (at most 256 KiB), so these cannot fail.
        if theirs.write_all(answers).await.is_err() || theirs.shutdown().await.is_err() {
            return None;
        }
        let login = format!("fuzz@{domain}");
        let outcome = crate::probe::imap_outcome(ours, provider, &login, &AuthCode::new(CODE)).await;
        drop(theirs);
        Some(outcome)
    });
    let Some((outcome, text)) = probed else { return };
    if outcome == ProbeOutcome::Accepted {
        let completed = |tag: &[u8]| answers.windows(tag.len()).any(|w| w.eq_ignore_ascii_case(tag));
        assert!(completed(b"V1 OK"), "ACCEPTED without a completed LOGIN: {text:?}");
        assert!(domain == "sina.com" || completed(b"V3 OK"), "NetEase ACCEPTED without EXAMINE: {text:?}");
    }
    assert!(text.len() < 64 * 1024, "{} bytes of text", text.len());
    let shown = crate::probe::sanitize(&text, CODE);
    assert!(!shown.contains(CODE), "the code is in the reported reply: {shown:?}");
}

/// Rows planted in the database by someone who edits the file: every read path answers with a
/// row or an error, and opening a planted code or checking a planted token's MAC fails cleanly.
pub fn stored_rows(data: &[u8]) {
    let Ok(back) = plant_and_read(&planted(data)) else { return };
    for e in &back.errors {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    let (kek, ring) = keys();
    if let Some(m) = &back.material {
        let _ = Keyring::unlock(kek, &m.keys);
    }
    for row in &back.credentials {
        if let Some(c) = &row.code {
            let opened = ring.open_code(
                c.key_id,
                &row.mailbox,
                &row.client,
                row.version,
                c.generation.as_ref(),
                &c.sealed.nonce,
                &c.sealed.ciphertext,
            );
            assert!(opened.is_err(), "a planted code opened");
        }
    }
    for (caller, id, found) in &back.requests {
        assert!(!request_row_is_authentic(ring, caller, id, found), "a planted request row passed its MAC");
    }
    for t in back.tokens.iter().flatten() {
        let _ = Role::parse(&t.role);
        assert!(rekey(ring, t).is_none(), "a planted token has a valid MAC");
    }
}

/// The rows fuzz bytes stand for: a table byte, then a typed value per column.
fn planted(data: &[u8]) -> Vec<(usize, Vec<Value>)> {
    let mut input = Bytes(data);
    let mut rows = Vec::new();
    while let Some(t) = input.byte() {
        let table = usize::from(t) % PLANTABLE_TABLES.len();
        let values = (0..PLANTABLE_TABLES[table].1).map(|_| input.value()).collect();
        rows.push((table, values));
    }
    rows
}

/// A KEK and a keyring no planted row was sealed under.
fn keys() -> &'static (Key, Keyring) {
    static KEYS: OnceLock<(Key, Keyring)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let kek = Key::from_bytes([7; 32]);
        let (ring, _) = Keyring::generate(&kek);
        (kek, ring)
    })
}

fn registry() -> &'static Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::builtin()))
}

/// Reads typed values from fuzz bytes; an exhausted input gives NULLs.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }

    fn value(&mut self) -> Value {
        let Some(kind) = self.byte() else { return Value::Null };
        match kind % 6 {
            0 => Value::Null,
            1 => Value::Integer(i64::from(kind >> 3) - 4),
            2 => {
                let b = self.take(8);
                let mut a = [0u8; 8];
                a[..b.len()].copy_from_slice(&b);
                Value::Integer(i64::from_le_bytes(a))
            }
            3 => Value::Real(f64::from(kind)),
            4 => {
                let n = usize::from(self.byte().unwrap_or(0) % 64);
                Value::Text(String::from_utf8_lossy(&self.take(n)).into_owned())
            }
            _ => {
                let n = usize::from(self.byte().unwrap_or(0) % 64);
                Value::Blob(self.take(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/../fuzz/corpus/stored_rows/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_stored_row_seeds_plant_the_rows_they_are_named_for() {
        let back = |name| plant_and_read(&planted(&seed(name))).unwrap_or_else(|e| panic!("{e}"));
        assert!(!back("credential").credentials.is_empty());
        // A key id beyond u32 makes the row unreadable: an error, not a guess.
        assert!(back("credential_bad_state").errors.iter().any(|e| e.to_string().contains("out of range")));
        assert!(back("token").tokens.iter().any(Result::is_ok));
        assert!(back("token_big_key").tokens.iter().any(Result::is_err));
        assert!(back("meta_and_key").material.is_some_and(|m| m.keys.len() == 1));
        assert!(back("meta_short_salt").errors.iter().any(|e| e.to_string().contains("salt")));
        assert!(!back("audit").audit.is_empty());
        assert!(!back("request").requests.is_empty());
        assert!(back("request_odd_key").errors.iter().any(|e| e.to_string().contains("out of range")));
    }
}
