//! The provider registry: which servers serve a mailbox domain, what its codes look like, and
//! what to tell an admin when a probe fails. Probe hosts come only from here, never a request.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::probe::ProbeOutcome;
use crate::secret::AuthCode;

/// A server as `host:port`, implicit TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    fn new(host: &str, port: u16) -> Self {
        Self {
            host: host.to_owned(),
            port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What a provider's client auth codes look like, after spaces are stripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
            Self::Alphanumeric { len } => {
                c.len() == len && c.bytes().all(|b| b.is_ascii_alphanumeric())
            }
            Self::Letters { len } => c.len() == len && c.bytes().all(|b| b.is_ascii_alphabetic()),
            Self::Printable { min, max } => {
                (min..=max).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_graphic())
            }
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

/// One mail provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Short id stored with each binding, e.g. `sina`.
    pub id: String,
    /// Name used in messages, e.g. `Sina Mail`.
    pub name: String,
    pub imap: Endpoint,
    pub smtp: Endpoint,
    pub code_format: CodeFormat,
    /// Where in webmail the user creates and deletes client codes.
    pub settings_path: String,
}

impl Provider {
    /// The hint for a probe outcome, in the provider's own terms.
    pub fn hint(&self, outcome: ProbeOutcome) -> String {
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
                    "Could not reach {}; check DNS, routing and firewalls, then retry.",
                    self.imap
                )
            }
            ProbeOutcome::TlsFailed => format!(
                "The TLS handshake with {} failed; check the certificate and the probe CA settings.",
                self.imap
            ),
            ProbeOutcome::TimedOut => format!("{} did not answer in time; retry later.", self.imap),
            ProbeOutcome::ProtocolError => {
                format!(
                    "{} answered unexpectedly; check that it is an IMAP server with implicit TLS.",
                    self.imap
                )
            }
        }
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

/// Providers by mailbox domain.
#[derive(Debug, Clone)]
pub struct Registry {
    by_domain: HashMap<String, Arc<Provider>>,
}

const SINA_SETTINGS: &str = "Settings → Client POP/IMAP/SMTP";

fn preset(
    id: &str,
    name: &str,
    imap: &str,
    smtp: &str,
    code_format: CodeFormat,
    settings_path: &str,
    domains: &[&str],
) -> (Vec<String>, Provider) {
    let provider = Provider {
        id: id.to_owned(),
        name: name.to_owned(),
        imap: Endpoint::new(imap, 993),
        smtp: Endpoint::new(smtp, 465),
        code_format,
        settings_path: settings_path.to_owned(),
    };
    (domains.iter().map(|d| (*d).to_owned()).collect(), provider)
}

impl Registry {
    /// The built-in presets.
    pub fn builtin() -> Self {
        let alnum16 = CodeFormat::Alphanumeric { len: 16 };
        let letters16 = CodeFormat::Letters { len: 16 };
        let presets = [
            preset(
                "sina",
                "Sina Mail",
                "imap.sina.com",
                "smtp.sina.com",
                alnum16,
                SINA_SETTINGS,
                &["sina.com", "sina.cn", "2008.sina.com"],
            ),
            preset(
                "sina-vip",
                "Sina VIP Mail",
                "imap.vip.sina.com",
                "smtp.vip.sina.com",
                alnum16,
                SINA_SETTINGS,
                &["vip.sina.com"],
            ),
            preset(
                "qq",
                "QQ Mail",
                "imap.qq.com",
                "smtp.qq.com",
                letters16,
                "Settings → Account → POP3/IMAP/SMTP service → authorization code",
                &["qq.com", "foxmail.com"],
            ),
            preset(
                "163",
                "NetEase 163 Mail",
                "imap.163.com",
                "smtp.163.com",
                alnum16,
                "Settings → POP3/SMTP/IMAP → client authorization code",
                &["163.com"],
            ),
            preset(
                "126",
                "NetEase 126 Mail",
                "imap.126.com",
                "smtp.126.com",
                alnum16,
                "Settings → POP3/SMTP/IMAP → client authorization code",
                &["126.com"],
            ),
            preset(
                "yeah",
                "NetEase Yeah Mail",
                "imap.yeah.net",
                "smtp.yeah.net",
                alnum16,
                "Settings → POP3/SMTP/IMAP → client authorization code",
                &["yeah.net"],
            ),
            preset(
                "sohu",
                "Sohu Mail",
                "imap.sohu.com",
                "smtp.sohu.com",
                CodeFormat::Printable { min: 8, max: 64 },
                "Settings → POP3/SMTP/IMAP → independent password",
                &["sohu.com"],
            ),
            preset(
                "gmail",
                "Gmail",
                "imap.gmail.com",
                "smtp.gmail.com",
                letters16,
                "Google Account → Security → App passwords",
                &["gmail.com", "googlemail.com"],
            ),
        ];
        let mut by_domain = HashMap::new();
        for (domains, provider) in presets {
            let provider = Arc::new(provider);
            for d in domains {
                by_domain.insert(d, provider.clone());
            }
        }
        Self { by_domain }
    }

    /// The provider serving `domain` (canonical, lower case).
    pub fn lookup(&self, domain: &str) -> Option<&Arc<Provider>> {
        self.by_domain.get(domain)
    }

    /// A provider by its id, for rows stored earlier.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Provider>> {
        self.by_domain.values().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sina_presets() {
        let r = Registry::builtin();
        for d in ["sina.com", "sina.cn", "2008.sina.com"] {
            assert_eq!(r.lookup(d).unwrap().imap.to_string(), "imap.sina.com:993");
        }
        assert_eq!(
            r.lookup("vip.sina.com").unwrap().imap.host,
            "imap.vip.sina.com"
        );
        assert!(r.lookup("example.org").is_none());
    }

    #[test]
    fn sina_code_format() {
        let f = Registry::builtin().lookup("sina.com").unwrap().code_format;
        assert!(f.accepts(&AuthCode::new("abcd1234EFGH5678")));
        assert!(f.accepts(&AuthCode::new("abcd 1234 EFGH 5678")));
        assert!(!f.accepts(&AuthCode::new("short")));
        assert!(!f.accepts(&AuthCode::new("abcd1234EFGH567!")));
    }
}
