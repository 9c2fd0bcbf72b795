//! The provider registry: which servers serve a mailbox domain, what its codes look like, how
//! to probe them, and what to tell an admin when a probe fails. Probe hosts come only from here
//! (built-in presets plus the operator's `--providers` file), never from a request.

mod file;
mod presets;
mod registry;

pub use file::ProviderFileError;
pub use registry::Registry;

use std::fmt;

use crate::outcome::ProbeOutcome;
use crate::secret::AuthCode;

/// A server as `host:port`, implicit TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    fn new(host: &str, port: u16) -> Self {
        Self { host: host.to_owned(), port }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{}' is not host:port", s.escape_debug());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || !is_host_name(host) {
            return Err(bad());
        }
        Ok(Self::new(&host.to_ascii_lowercase(), port))
    }
}

/// Whether `s` is a DNS host name: at most 253 characters of at least two dot-separated labels,
/// each 1-63 ASCII letters, digits or `-` and not starting or ending with `-`, the last (the
/// top-level domain) letters only or `xn--` punycode. An IP address in any form the resolver
/// reads (`127.1`, `0x7f000001`, `127.0.0.0x1`) is no provider's name.
pub(crate) fn is_host_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let top_level_ok = |l: &str| l.bytes().all(|b| b.is_ascii_alphabetic()) || l.starts_with("xn--");
    s.len() <= 253 && s.contains('.') && s.split('.').all(label_ok) && s.rsplit('.').next().is_some_and(top_level_ok)
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What a provider's client auth codes look like, after spaces are stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CodeFormat {
    /// Exactly `len` ASCII letters or digits.
    Alphanumeric { len: usize },
    /// Exactly `len` ASCII letters.
    Letters { len: usize },
    /// Between `min` and `max` printable ASCII characters (providers with free-form codes).
    Printable { min: usize, max: usize },
}

impl CodeFormat {
    pub fn accepts(self, code: &AuthCode) -> bool {
        let c = code.expose();
        match self {
            Self::Alphanumeric { len } => c.len() == len && c.bytes().all(|b| b.is_ascii_alphanumeric()),
            Self::Letters { len } => c.len() == len && c.bytes().all(|b| b.is_ascii_alphabetic()),
            Self::Printable { min, max } => (min..=max).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_graphic()),
        }
    }

    /// How hints name the code: "16-character client auth code".
    pub fn noun(self) -> String {
        match self {
            Self::Alphanumeric { len } | Self::Letters { len } => format!("{len}-character client auth code"),
            Self::Printable { .. } => "client auth code".to_owned(),
        }
    }

    pub fn describe(self) -> String {
        match self {
            Self::Alphanumeric { len } => format!("{len} letters or digits"),
            Self::Letters { len } => format!("{len} letters"),
            Self::Printable { min, max } => format!("{min} to {max} printable characters"),
        }
    }
}

/// Which IMAP commands a probe runs after LOGIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapSteps {
    /// LOGIN → LOGOUT.
    Login,
    /// LOGIN → ID → EXAMINE INBOX → LOGOUT: NetEase accepts LOGIN from any client, then refuses
    /// mailbox access ("Unsafe Login") to clients that did not send ID (RFC 2971).
    NetEase,
}

/// One mail provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Short id stored with each binding, e.g. `sina`.
    pub id: String,
    /// Name used in messages, e.g. `Sina Mail`.
    pub name: String,
    /// Mailbox domains it serves, lower case.
    pub domains: Vec<String>,
    pub imap: Endpoint,
    pub smtp: Endpoint,
    pub code_format: CodeFormat,
    /// Where in webmail the user creates and deletes client codes.
    pub settings_path: String,
    pub imap_steps: ImapSteps,
    /// Also probe SMTP AUTH after a successful IMAP login.
    pub smtp_probe: bool,
}

impl Provider {
    /// The hint for a probe outcome of a new or stored code, in the provider's own terms (an
    /// IMAP step's).
    pub fn hint(&self, outcome: ProbeOutcome) -> String {
        self.hint_at(outcome, &self.imap, "IMAP")
    }

    /// The hint for an outcome of the step against `server`, which speaks `protocol`.
    pub fn hint_at(&self, outcome: ProbeOutcome, server: &Endpoint, protocol: &str) -> String {
        match outcome {
            ProbeOutcome::Accepted => format!("{} accepted the code.", self.name),
            ProbeOutcome::Rejected => format!(
                "{} refused the code. Use the client auth code from webmail ({}), not the login password, \
                 and make sure IMAP/SMTP access is enabled there; a code stops working after a password \
                 change or when it is deleted in webmail.",
                self.name, self.settings_path
            ),
            ProbeOutcome::Unreachable => {
                format!(
                    "Could not reach {server}, or it closed the connection; check DNS, routing and firewalls, then retry."
                )
            }
            ProbeOutcome::TlsFailed => {
                format!("The TLS handshake with {server} failed; check the certificate and the probe CA settings.")
            }
            ProbeOutcome::TimedOut => format!("{server} did not answer in time; retry later."),
            ProbeOutcome::ProtocolError => {
                format!("{server} answered unexpectedly; check that it is an {protocol} server with implicit TLS.")
            }
        }
    }

    /// The hint when a stored code (Verify, a scheduled sweep) is refused: what most likely
    /// happened at this provider, and what to do.
    pub fn stored_code_rejected_hint(&self) -> String {
        let cause = if self.id == "gmail" {
            "Google revokes every app password when the account password changes, and one may have been removed by hand"
                .to_owned()
        } else if self.imap_steps == ImapSteps::NetEase {
            "most likely the mailbox password was changed, the code was deleted or IMAP/SMTP service was switched off \
             in webmail (an \"Unsafe Login\" refusal instead means the client must send IMAP ID, as the vault does)"
                .to_owned()
        } else {
            "most likely the mailbox password was changed (which voids every client code) or the code was deleted \
             or IMAP/SMTP switched off in webmail"
                .to_owned()
        };
        format!(
            "{} no longer accepts the stored code: {cause}. Make a new code ({}) and Rotate it in; senders using \
             this pair fail until then.",
            self.name, self.settings_path
        )
    }

    /// The hint when SMTP AUTH refused the code (535, or Gmail's 534 5.7.9).
    pub fn smtp_rejected_hint(&self) -> String {
        format!(
            "{} refused SMTP AUTH: use the {}, not the login password; make sure IMAP/SMTP is enabled in \
             webmail ({}).",
            self.name,
            self.code_format.noun(),
            self.settings_path
        )
    }

    /// The hint when NetEase refused mailbox access after LOGIN.
    pub fn unsafe_login_hint(&self) -> String {
        format!(
            "{} accepted the login but refused mailbox access as an \"Unsafe Login\", although the probe identified \
             itself with IMAP ID. Make sure IMAP is enabled and the code is a client authorization code ({}); if it \
             persists, the account is blocking third-party clients.",
            self.name, self.settings_path
        )
    }

    /// The hint for a probe of a code that was just replaced or revoked.
    pub fn previous_code_hint(&self, outcome: ProbeOutcome, what: &str) -> String {
        match outcome {
            ProbeOutcome::Accepted => format!(
                "{} still accepts the {what}. Delete it in webmail ({}) so that it cannot be used any more.",
                self.name, self.settings_path
            ),
            ProbeOutcome::Rejected => format!("{} no longer accepts the {what}; nothing more to do.", self.name),
            other => format!(
                "Could not tell whether {} still accepts the {what} ({}); check in webmail ({}) and delete it there.",
                self.name,
                other.as_str(),
                self.settings_path
            ),
        }
    }

    /// The hint for a replaced or revoked code (`what`) that is also `client`'s code for the
    /// same mailbox: deleting it in webmail would break that client.
    pub fn shared_code_hint(&self, outcome: ProbeOutcome, what: &str, client: &str) -> String {
        let name = &self.name;
        match outcome {
            ProbeOutcome::Accepted => format!(
                "{name} still accepts the {what}, and it is also the code of client {client} for this mailbox: \
                 do not delete it in webmail until {client} has a code of its own (one code per client, so that each \
                 can be revoked alone)."
            ),
            ProbeOutcome::Rejected => format!(
                "{name} no longer accepts the {what}, which is also the code of client {client} for this \
                 mailbox: {client} no longer works either (Verify it, then Rotate it to a code of its own)."
            ),
            other => format!(
                "Could not tell whether {name} still accepts the {what} ({}); it is also the code of client \
                 {client} for this mailbox, so do not delete it in webmail until {client} has a code of its own.",
                other.as_str()
            ),
        }
    }

    /// The hint for a code just bound or rotated in that client `client` of the mailbox holds
    /// too: deleting it in webmail would break both.
    pub fn shared_new_code_hint(&self, client: &str) -> String {
        format!(
            "{} accepted the code. It is also the code of client {client} for this mailbox: give each client a \
             code of its own (create another in webmail and Rotate one of the two to it), so that each can be \
             revoked alone.",
            self.name
        )
    }

    /// The message for a code that cannot be this provider's, naming the usual mistake.
    pub fn format_hint(&self) -> String {
        format!(
            "{} client auth codes are {} (spaces are ignored); this looks like a login password or a \
             mistyped code. Create a client auth code in webmail ({}).",
            self.name,
            self.code_format.describe(),
            self.settings_path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_formats() {
        let f = CodeFormat::Alphanumeric { len: 16 };
        assert!(f.accepts(&AuthCode::new("abcd1234EFGH5678")));
        assert!(f.accepts(&AuthCode::new("abcd 1234 EFGH 5678")));
        assert!(!f.accepts(&AuthCode::new("short")));
        assert!(!f.accepts(&AuthCode::new("abcd1234EFGH567!")));
        let l = CodeFormat::Letters { len: 16 };
        assert!(l.accepts(&AuthCode::new("abcd efgh ijkl mnop")));
        assert!(!l.accepts(&AuthCode::new("abcd1234EFGH5678")));
        let p = CodeFormat::Printable { min: 8, max: 64 };
        assert!(p.accepts(&AuthCode::new("pa$$w0rd!")));
        assert!(!p.accepts(&AuthCode::new("short")));
    }

    #[test]
    fn a_stored_code_refused_is_explained_in_each_provider_s_terms() {
        let registry = crate::provider::Registry::builtin();
        let hint = |id: &str| registry.by_id(id).map(|p| p.stored_code_rejected_hint()).unwrap_or_default();
        for (id, says) in [
            ("sina", "the mailbox password was changed (which voids every client code)"),
            ("qq", "the mailbox password was changed (which voids every client code)"),
            ("163", "\"Unsafe Login\" refusal instead means the client must send IMAP ID"),
            ("126", "\"Unsafe Login\" refusal instead means the client must send IMAP ID"),
            ("gmail", "Google revokes every app password when the account password changes"),
        ] {
            let hint = hint(id);
            assert!(hint.contains(says) && hint.contains("Rotate it in"), "{id}: {hint}");
        }
    }

    #[test]
    fn endpoints_parse() {
        let e: Endpoint = "IMAP.corp.example:993".parse().unwrap();
        assert_eq!(e.to_string(), "imap.corp.example:993");
        for bad in ["imap.corp.example", "host:0", ":993", "a b:1", "h:99999"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
