//! The keyring: data-encryption keys (DEKs) by id, each wrapped by the KEK. Codes are sealed
//! under the active DEK with an AAD that binds the ciphertext to its row.

use std::collections::BTreeMap;

use super::CryptoError;
use super::envelope::{self, Key, Sealed};

/// Domain tags keep a wrapped key from ever opening as a code, and the other way round.
const DEK_TAG: &[u8] = b"authcode-vault/dek";
const CODE_TAG: &[u8] = b"authcode-vault/code";
/// Label of the key that MACs token rows.
const TOKEN_MAC_LABEL: &[u8] = b"authcode-vault/token-mac/v1";
/// Label of the key that fingerprints idempotent requests.
const REQUEST_MAC_LABEL: &[u8] = b"authcode-vault/request-mac/v1";
/// Format versions of the code AAD layout: 1 without a generation (rows sealed before
/// generations existed), 2 with one.
const CODE_FORMAT_LEGACY: u8 = 1;
const CODE_FORMAT: u8 = 2;

pub type KeyId = u32;

/// A random value drawn for every seal and bound into its AAD, so that no two seals of a pair
/// ever share an AAD (a replayed old ciphertext cannot open).
pub type Generation = [u8; 16];

/// A DEK as stored: sealed under the KEK.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    pub key_id: KeyId,
    pub sealed: Sealed,
}

/// The unlocked DEKs. Its Debug shows key ids only.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: BTreeMap<KeyId, Key>,
    active: KeyId,
}

fn dek_aad(key_id: KeyId) -> Vec<u8> {
    [DEK_TAG, &key_id.to_be_bytes()].concat()
}

/// AAD for a code: tag, format, key id, mailbox, client (length-prefixed), version, and (format
/// 2) the seal's generation.
fn code_aad(key_id: KeyId, mailbox: &str, client: &str, version: u64, generation: Option<&Generation>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CODE_TAG.len() + 1 + 4 + 8 + mailbox.len() + client.len() + 8 + 16);
    aad.extend_from_slice(CODE_TAG);
    aad.push(if generation.is_some() { CODE_FORMAT } else { CODE_FORMAT_LEGACY });
    aad.extend_from_slice(&key_id.to_be_bytes());
    for part in [mailbox, client] {
        // Canonical ids are at most 254 bytes, so the length always fits.
        aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&version.to_be_bytes());
    if let Some(g) = generation {
        aad.extend_from_slice(g);
    }
    aad
}

impl Keyring {
    /// A new keyring with one random DEK (id 1), and that DEK wrapped for storage.
    pub fn generate(kek: &Key) -> (Self, WrappedKey) {
        let dek = Key::random();
        let wrapped = WrappedKey { key_id: 1, sealed: envelope::seal(kek, &dek_aad(1), dek.as_bytes()) };
        (Self { keys: BTreeMap::from([(1, dek)]), active: 1 }, wrapped)
    }

    /// Unwraps every stored DEK. Fails with `Decrypt` on a wrong passphrase; the highest id is
    /// the active key.
    pub fn unlock(kek: &Key, wrapped: &[WrappedKey]) -> Result<Self, CryptoError> {
        let mut keys = BTreeMap::new();
        for w in wrapped {
            let bytes = envelope::open(kek, &dek_aad(w.key_id), &w.sealed.nonce, &w.sealed.ciphertext)?;
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::Decrypt)?;
            keys.insert(w.key_id, Key::from_bytes(arr));
        }
        let active = *keys.keys().next_back().ok_or(CryptoError::Decrypt)?;
        Ok(Self { keys, active })
    }

    /// This keyring plus a new random DEK (the next id), which becomes the active key, and that
    /// DEK wrapped under `kek` for storage.
    pub fn with_new_key(&self, kek: &Key) -> (Self, WrappedKey) {
        let key_id = self.keys.keys().next_back().map_or(1, |k| k + 1);
        let dek = Key::random();
        let wrapped = WrappedKey { key_id, sealed: envelope::seal(kek, &dek_aad(key_id), dek.as_bytes()) };
        let mut keys = self.keys.clone();
        keys.insert(key_id, dek);
        (Self { keys, active: key_id }, wrapped)
    }

    /// This keyring without the keys older than the active one (after they were deleted).
    #[must_use]
    pub fn without_retired(&self) -> Self {
        let keys = self.keys.iter().filter(|(id, _)| **id >= self.active).map(|(id, k)| (*id, k.clone())).collect();
        Self { keys, active: self.active }
    }

    /// Whether keys older than the active one are still held: a rotation is under way.
    pub fn holds_older_keys(&self) -> bool {
        self.keys.keys().next().is_some_and(|oldest| *oldest < self.active)
    }

    /// Whether the keyring holds key `key_id`.
    pub fn has_key(&self, key_id: KeyId) -> bool {
        self.keys.contains_key(&key_id)
    }

    /// Every DEK wrapped again under `kek` (fresh nonces): what a passphrase change stores.
    pub fn wrap_all(&self, kek: &Key) -> Vec<WrappedKey> {
        self.keys
            .iter()
            .map(|(id, dek)| WrappedKey { key_id: *id, sealed: envelope::seal(kek, &dek_aad(*id), dek.as_bytes()) })
            .collect()
    }

    /// A seal in the legacy AAD format 1 (no generation), as vaults wrote before migration 0003.
    #[cfg(test)]
    pub(crate) fn seal_code_legacy(&self, mailbox: &str, client: &str, version: u64, code: &[u8]) -> (KeyId, Sealed) {
        let key = &self.keys[&self.active];
        (self.active, envelope::seal(key, &code_aad(self.active, mailbox, client, version, None), code))
    }

    pub fn active_key_id(&self) -> KeyId {
        self.active
    }

    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    /// The key that MACs token rows, derived from DEK `key_id` (HMAC-SHA256 as a PRF, RFC 2104),
    /// so minting a token needs the unlocked keyring, hence the passphrase.
    pub fn token_mac_key(&self, key_id: KeyId) -> Result<Key, CryptoError> {
        self.derived_key(key_id, TOKEN_MAC_LABEL)
    }

    /// The key that fingerprints idempotent requests (codes included), derived from DEK `key_id`
    /// like the token MAC key, so a stored fingerprint reveals nothing without the keyring.
    pub fn request_mac_key(&self, key_id: KeyId) -> Result<Key, CryptoError> {
        self.derived_key(key_id, REQUEST_MAC_LABEL)
    }

    fn derived_key(&self, key_id: KeyId, label: &[u8]) -> Result<Key, CryptoError> {
        let dek = self.keys.get(&key_id).ok_or(CryptoError::UnknownKey(key_id))?;
        Ok(Key::from_bytes(super::mac::hmac(dek, &[label])))
    }

    /// Seals a code under the active DEK, bound to (mailbox, client, version) and a fresh random
    /// generation, which the row must keep next to the ciphertext.
    pub fn seal_code(&self, mailbox: &str, client: &str, version: u64, code: &[u8]) -> (KeyId, Generation, Sealed) {
        let key_id = self.active;
        let key = &self.keys[&key_id];
        let mut generation = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut generation);
        (key_id, generation, envelope::seal(key, &code_aad(key_id, mailbox, client, version, Some(&generation)), code))
    }

    /// Opens a code; a ciphertext moved to another row, key id, version or generation fails with
    /// `Decrypt`. `generation` is `None` only for rows sealed before generations existed.
    #[allow(clippy::too_many_arguments)]
    pub fn open_code(
        &self,
        key_id: KeyId,
        mailbox: &str,
        client: &str,
        version: u64,
        generation: Option<&Generation>,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        let key = self.keys.get(&key_id).ok_or(CryptoError::UnknownKey(key_id))?;
        envelope::open(key, &code_aad(key_id, mailbox, client, version, generation), nonce, ciphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrapped_keys_open_under_the_new_kek_only() {
        let (old, new) = (Key::random(), Key::random());
        let (ring, _) = Keyring::generate(&old);
        let rewrapped = ring.wrap_all(&new);
        let again = Keyring::unlock(&new, &rewrapped).unwrap();
        assert_eq!(again.keys[&1].as_bytes(), ring.keys[&1].as_bytes());
        assert!(matches!(Keyring::unlock(&old, &rewrapped), Err(CryptoError::Decrypt)));
    }

    #[test]
    fn a_new_key_becomes_active_and_old_seals_still_open_until_retired() {
        let kek = Key::random();
        let (ring, _) = Keyring::generate(&kek);
        let (kid, g, s) = ring.seal_code("a@sina.com", "x", 1, b"old key code");
        let (next, wrapped) = ring.with_new_key(&kek);
        assert_eq!((next.active_key_id(), wrapped.key_id), (2, 2));
        assert!(next.open_code(kid, "a@sina.com", "x", 1, Some(&g), &s.nonce, &s.ciphertext).is_ok());
        let (kid2, ..) = next.seal_code("a@sina.com", "x", 1, b"new key code");
        assert_eq!(kid2, 2);
        let stored = Keyring::unlock(
            &kek,
            &[WrappedKey { key_id: 1, sealed: envelope::seal(&kek, &dek_aad(1), ring.keys[&1].as_bytes()) }, wrapped],
        )
        .unwrap();
        assert_eq!(stored.active_key_id(), 2);
        let retired = next.without_retired();
        assert_eq!(retired.key_ids().collect::<Vec<_>>(), vec![2]);
        assert!(matches!(
            retired.open_code(kid, "a@sina.com", "x", 1, Some(&g), &s.nonce, &s.ciphertext),
            Err(CryptoError::UnknownKey(1))
        ));
    }

    #[test]
    fn wrong_kek_fails_to_unlock() {
        let kek = Key::random();
        let (_, wrapped) = Keyring::generate(&kek);
        assert!(Keyring::unlock(&kek, std::slice::from_ref(&wrapped)).is_ok());
        assert!(matches!(Keyring::unlock(&Key::random(), &[wrapped]), Err(CryptoError::Decrypt)));
    }

    #[test]
    fn code_is_bound_to_its_row() {
        let (ring, _) = Keyring::generate(&Key::random());
        let (kid, g, s) = ring.seal_code("a@sina.com", "x", 1, b"abcdefghijklmnop");
        let ok = ring.open_code(kid, "a@sina.com", "x", 1, Some(&g), &s.nonce, &s.ciphertext).unwrap();
        assert_eq!(ok.as_slice(), b"abcdefghijklmnop");
        assert!(ring.open_code(kid, "b@sina.com", "x", 1, Some(&g), &s.nonce, &s.ciphertext).is_err());
        assert!(ring.open_code(kid, "a@sina.com", "y", 1, Some(&g), &s.nonce, &s.ciphertext).is_err());
        assert!(ring.open_code(kid, "a@sina.com", "x", 2, Some(&g), &s.nonce, &s.ciphertext).is_err());
        // Another seal of the same pair and version (a re-bind) has another generation.
        let (_, g2, _) = ring.seal_code("a@sina.com", "x", 1, b"abcdefghijklmnop");
        assert_ne!(g, g2);
        assert!(ring.open_code(kid, "a@sina.com", "x", 1, Some(&g2), &s.nonce, &s.ciphertext).is_err());
        assert!(ring.open_code(kid, "a@sina.com", "x", 1, None, &s.nonce, &s.ciphertext).is_err());
        // Length prefixes stop ("ab","c") from colliding with ("a","bc").
        let (kid, g, s) = ring.seal_code("ab", "c", 1, b"k");
        assert!(ring.open_code(kid, "a", "bc", 1, Some(&g), &s.nonce, &s.ciphertext).is_err());
    }
}

#[cfg(test)]
mod legacy {
    use super::*;

    #[test]
    fn rows_sealed_before_generations_still_open() {
        let (ring, _) = Keyring::generate(&Key::random());
        let key = &ring.keys[&1];
        let sealed = envelope::seal(key, &code_aad(1, "a@sina.com", "x", 3, None), b"legacy code");
        let open = ring.open_code(1, "a@sina.com", "x", 3, None, &sealed.nonce, &sealed.ciphertext).unwrap();
        assert_eq!(open.as_slice(), b"legacy code");
        assert!(ring.open_code(1, "a@sina.com", "x", 3, Some(&[0; 16]), &sealed.nonce, &sealed.ciphertext).is_err());
    }
}
