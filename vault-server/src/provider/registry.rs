//! Providers by id and by mailbox domain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::file::{self, ProviderFileError};
use super::{Provider, presets};

#[derive(Debug, Clone)]
pub struct Registry {
    by_id: HashMap<String, Arc<Provider>>,
    by_domain: HashMap<String, Arc<Provider>>,
}

impl Registry {
    /// The built-in presets only.
    pub fn builtin() -> Self {
        Self::from_providers(presets::builtin()).unwrap_or_else(|e| unreachable!("presets are consistent: {e}"))
    }

    /// The presets with the operator's file applied on top.
    pub fn with_file(path: &Path) -> Result<Self, ProviderFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ProviderFileError::new(path, format!("cannot read: {e}")))?;
        Self::from_toml(&text).map_err(|reason| ProviderFileError::new(path, reason))
    }

    /// The presets with a providers file's text applied on top (the fuzz target calls it too).
    #[doc(hidden)]
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let mut providers = presets::builtin();
        file::parse_into(text, &mut providers)?;
        Self::from_providers(providers)
    }

    pub(super) fn from_providers(providers: Vec<Provider>) -> Result<Self, String> {
        let mut by_id = HashMap::new();
        let mut by_domain: HashMap<String, Arc<Provider>> = HashMap::new();
        for p in providers {
            let p = Arc::new(p);
            for d in &p.domains {
                if let Some(other) = by_domain.insert(d.clone(), p.clone()) {
                    return Err(format!("domain {d} is claimed by both [{}] and [{}]", other.id, p.id));
                }
            }
            by_id.insert(p.id.clone(), p);
        }
        Ok(Self { by_id, by_domain })
    }

    /// The provider serving `domain` (canonical, lower case).
    pub fn lookup(&self, domain: &str) -> Option<&Arc<Provider>> {
        self.by_domain.get(domain)
    }

    /// The ports any provider probes `host` (canonical, lower case) on: IMAP, and SMTP where it
    /// is probed (`smtp_for_all`, or the provider's `smtp_probe`); sorted.
    pub fn ports_of(&self, host: &str, smtp_for_all: bool) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .providers()
            .flat_map(|p| [Some(&p.imap), Some(&p.smtp).filter(|_| smtp_for_all || p.smtp_probe)])
            .flatten()
            .filter(|e| e.host == host)
            .map(|e| e.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Every provider, in no particular order.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_id.values()
    }

    /// A provider by id, for rows stored earlier.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Provider>> {
        self.by_id.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ImapSteps;

    #[test]
    fn presets() {
        let r = Registry::builtin();
        for d in ["sina.com", "sina.cn", "2008.sina.com"] {
            assert_eq!(r.lookup(d).unwrap().imap.to_string(), "imap.sina.com:993");
        }
        assert_eq!(r.lookup("vip.sina.com").unwrap().imap.host, "imap.vip.sina.com");
        assert_eq!(r.lookup("foxmail.com").unwrap().id, "qq");
        for (d, host) in [("163.com", "imap.163.com"), ("126.com", "imap.126.com"), ("yeah.net", "imap.yeah.net")] {
            let p = r.lookup(d).unwrap();
            assert_eq!(p.imap.host, host);
            assert_eq!(p.imap_steps, ImapSteps::NetEase);
        }
        assert_eq!(r.lookup("googlemail.com").unwrap().smtp.to_string(), "smtp.gmail.com:465");
        assert_eq!(r.lookup("sohu.com").unwrap().imap.host, "imap.sohu.com");
        assert!(r.lookup("example.org").is_none());
        assert_eq!(r.by_id("sina-vip").unwrap().domains, ["vip.sina.com"]);
    }
}
