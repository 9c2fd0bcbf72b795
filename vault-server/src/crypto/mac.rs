//! HMAC-SHA256 (RFC 2104) over length-prefixed fields, so ("ab","c") and ("a","bc") differ.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::Key;

fn mac(key: &Key, fields: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    for f in fields {
        m.update(&u64::try_from(f.len()).unwrap_or(u64::MAX).to_be_bytes());
        m.update(f);
    }
    m
}

/// The tag over `fields`.
pub fn hmac(key: &Key, fields: &[&[u8]]) -> [u8; 32] {
    mac(key, fields).finalize().into_bytes().into()
}

/// Checks a tag in constant time.
pub fn verify_hmac(key: &Key, fields: &[&[u8]], tag: &[u8]) -> bool {
    hmac(key, fields)[..].ct_eq(tag).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_framed_and_tags_checked() {
        let k = Key::random();
        let t = hmac(&k, &[b"ab", b"c"]);
        assert_ne!(t, hmac(&k, &[b"a", b"bc"]));
        assert!(verify_hmac(&k, &[b"ab", b"c"], &t));
        assert!(!verify_hmac(&k, &[b"ab", b"d"], &t));
        assert!(!verify_hmac(&Key::random(), &[b"ab", b"c"], &t));
        assert!(!verify_hmac(&k, &[b"ab", b"c"], &t[..31]));
    }
}
