//! Secret-bearing types. None of them prints its contents in Debug.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// A provider auth code, spaces already stripped.
pub struct AuthCode(SecretString);

impl AuthCode {
    /// Takes the code as typed; spaces (Gmail shows app passwords in groups) are removed.
    pub fn new(raw: &str) -> Self {
        let stripped: Zeroizing<String> = Zeroizing::new(raw.chars().filter(|c| *c != ' ').collect());
        Self(SecretString::from(stripped.as_str()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether `other` is the same code, compared in constant time.
    pub fn same_as(&self, other: &AuthCode) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.expose().as_bytes().ct_eq(other.expose().as_bytes()))
    }
}

impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthCode([redacted])")
    }
}

/// The master passphrase, as read from a file or the environment.
pub struct Passphrase(SecretString);

impl Passphrase {
    /// A trailing newline from a file is not part of the passphrase.
    pub fn new(raw: &str) -> Self {
        Self(SecretString::from(raw.trim_end_matches(['\n', '\r'])))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.0.expose_secret().is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let code = AuthCode::new("abcd efgh ijkl mnop");
        assert_eq!(code.expose(), "abcdefghijklmnop");
        assert!(!format!("{code:?}").contains("abcd"));
        let p = Passphrase::new("hunter2\n");
        assert_eq!(p.expose(), "hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
    }
}
