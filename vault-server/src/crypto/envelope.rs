//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) with a fresh random 192-bit nonce per seal.
//! Random nonces of that size make collisions negligible for any realistic number of codes.

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use rand::{RngCore, rngs::OsRng};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::CryptoError;

pub const NONCE_LEN: usize = 24;

/// A 256-bit symmetric key, wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([redacted])")
    }
}

/// A nonce and the ciphertext (with its 16-byte tag) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

/// Encrypts `plaintext` under `key`, binding it to `aad`.
pub fn seal(key: &Key, aad: &[u8], plaintext: &[u8]) -> Sealed {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    // Encryption fails only for inputs over ~256 GiB; codes and keys are tiny.
    let ciphertext = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad }).unwrap_or_default();
    Sealed { nonce, ciphertext }
}

/// Decrypts and authenticates; any mismatch of key, nonce, AAD or bytes is `Decrypt`.
pub fn open(key: &Key, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::Decrypt);
    }
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = Key::random();
        let sealed = seal(&key, b"aad", b"secret");
        assert_eq!(open(&key, b"aad", &sealed.nonce, &sealed.ciphertext).unwrap().as_slice(), b"secret");
        assert!(open(&key, b"other", &sealed.nonce, &sealed.ciphertext).is_err());
        assert!(open(&Key::random(), b"aad", &sealed.nonce, &sealed.ciphertext).is_err());
        let mut ct = sealed.ciphertext.clone();
        ct[0] ^= 1;
        assert!(open(&key, b"aad", &sealed.nonce, &ct).is_err());
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Key::random();
        assert_ne!(seal(&key, b"", b"x").nonce, seal(&key, b"", b"x").nonce);
    }

    /// Known-answer test from draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn xchacha_known_vector() {
        let key: [u8; 32] = hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
            .unwrap()
            .try_into()
            .unwrap();
        let nonce = hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657").unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = hex::decode(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
            "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
            "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e",
            // the 16-byte Poly1305 tag
            "c0875924c1c7987947deafd8780acf49"
        ))
        .unwrap();
        let got = open(&Key::from_bytes(key), &aad, &nonce, &ct).unwrap();
        assert_eq!(got.as_slice(), pt);
    }
}
