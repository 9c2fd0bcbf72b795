//! Argon2id (RFC 9106) derives the key-encryption key from the master passphrase.

use argon2::{Algorithm, Argon2, Params, Version};
use rand::{RngCore, rngs::OsRng};

use super::{CryptoError, Key};
use crate::secret::Passphrase;

/// Argon2id cost parameters, stored beside the salt so they can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl KdfParams {
    /// The floor: 64 MiB, three passes, one lane (about 0.1 s here, optimised).
    pub const FLOOR: Self = Self { m_kib: 64 * 1024, t: 3, p: 1 };

    /// The ceiling: 1 GiB, 64 passes, 64 lanes. Beyond it an unlock would exhaust memory or run
    /// for hours.
    pub const CEILING: Self = Self { m_kib: 1024 * 1024, t: 64, p: 64 };

    /// Refuses parameters below the floor, so a tampered meta row cannot weaken the KDF, or above
    /// the ceiling, so that it cannot make every unlock abort or hang.
    pub fn check(self) -> Result<Self, CryptoError> {
        let (floor, ceiling) = (Self::FLOOR, Self::CEILING);
        if self.m_kib < floor.m_kib || self.t < floor.t || self.p < floor.p {
            return Err(CryptoError::KdfParams(format!(
                "m={} KiB t={} p={} is below the floor m={} KiB t={} p={}",
                self.m_kib, self.t, self.p, floor.m_kib, floor.t, floor.p
            )));
        }
        if self.m_kib > ceiling.m_kib || self.t > ceiling.t || self.p > ceiling.p {
            return Err(CryptoError::KdfParams(format!(
                "m={} KiB t={} p={} is above the ceiling m={} KiB t={} p={} (was the vault_meta row edited?)",
                self.m_kib, self.t, self.p, ceiling.m_kib, ceiling.t, ceiling.p
            )));
        }
        Ok(self)
    }
}

/// A random 128-bit salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt(pub [u8; 16]);

impl Salt {
    pub fn random() -> Self {
        let mut s = [0u8; 16];
        OsRng.fill_bytes(&mut s);
        Self(s)
    }
}

/// Derives the 256-bit KEK.
pub fn derive_kek(passphrase: &Passphrase, salt: &Salt, params: KdfParams) -> Result<Key, CryptoError> {
    let params = params.check()?;
    let argon = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(|e| CryptoError::KdfParams(e.to_string()))?,
    );
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.expose().as_bytes(), &salt.0, &mut out)
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    Ok(Key::from_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_and_ceiling_are_enforced() {
        assert!(KdfParams { m_kib: 1024, t: 3, p: 1 }.check().is_err());
        // Found by an attack: 4 GiB in the meta row aborted every unlock; t = 10^8 hung it.
        for over in [
            KdfParams { m_kib: 4 * 1024 * 1024, ..KdfParams::FLOOR },
            KdfParams { t: 100_000_000, ..KdfParams::FLOOR },
            KdfParams { p: 65, ..KdfParams::FLOOR },
        ] {
            let e = over.check().unwrap_err().to_string();
            assert!(e.contains("above the ceiling"), "{e}");
        }
        assert!(KdfParams::CEILING.check().is_ok());
        assert!(KdfParams::FLOOR.check().is_ok());
    }

    #[test]
    fn same_inputs_same_key_and_salt_matters() {
        let p = Passphrase::new("correct horse");
        let salt = Salt([7; 16]);
        let a = derive_kek(&p, &salt, KdfParams::FLOOR).unwrap();
        let b = derive_kek(&p, &salt, KdfParams::FLOOR).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        let c = derive_kek(&p, &Salt([8; 16]), KdfParams::FLOOR).unwrap();
        assert_ne!(a.as_bytes(), c.as_bytes());
    }
}
