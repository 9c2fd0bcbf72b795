//! Envelope encryption: Argon2id KEK → keyring of random DEKs → XChaCha20-Poly1305 per code.

mod envelope;
mod kdf;
mod keyring;
mod live;
mod mac;

pub use envelope::{Key, Sealed};
pub use kdf::{KdfParams, Salt, derive_kek};
pub use keyring::{Generation, KeyId, Keyring, WrappedKey};
pub use live::LiveKeyring;
pub use mac::{hmac, verify_hmac};

/// The key-encryption key a vault was unlocked with, and the salt it was derived with: what a
/// server that rotates data keys keeps to wrap a new one. Wiped on drop; Debug shows nothing.
pub struct Kek {
    pub key: Key,
    pub salt: Salt,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

/// Every crypto failure. All decryption failures are one variant on purpose: the caller learns
/// that authentication failed, never why.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
    #[error("key derivation parameters are invalid: {0}")]
    KdfParams(String),
    #[error("no key with id {0} in the keyring")]
    UnknownKey(u32),
}
