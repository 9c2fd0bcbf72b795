//! TLS settings for probes: public roots plus an optional extra CA, and curl-style
//! `--probe-resolve HOST:PORT=ADDR:PORT` overrides that change where we connect but not which
//! name the certificate must carry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// One `HOST:PORT=ADDR:PORT` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

impl FromStr for ResolveOverride {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("'{s}' is not HOST:PORT=ADDR:PORT (for example imap.sina.com:993=127.0.0.1:10993)");
        let (target, addr) = s.split_once('=').ok_or_else(usage)?;
        let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
        let port: u16 = port.parse().map_err(|_| usage())?;
        let addr: SocketAddr = addr.parse().map_err(|_| usage())?;
        if host.is_empty() {
            return Err(usage());
        }
        Ok(Self { host: host.to_ascii_lowercase(), port, addr })
    }
}

/// Everything a probe needs to open a verified TLS connection.
#[derive(Clone)]
pub struct ProbeTls {
    pub config: Arc<ClientConfig>,
    overrides: HashMap<(String, u16), SocketAddr>,
}

impl std::fmt::Debug for ProbeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTls").field("overrides", &self.overrides).finish_non_exhaustive()
    }
}

impl ProbeTls {
    /// Public (webpki) roots, plus every certificate in `extra_ca` if given.
    pub fn new(extra_ca: Option<&Path>, overrides: &[ResolveOverride]) -> Result<Self, String> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = extra_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read probe CA file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("probe CA file {} is not valid PEM: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("probe CA file {} holds no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("probe CA file {} holds an unusable certificate: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let overrides = overrides.iter().map(|o| ((o.host.clone(), o.port), o.addr)).collect();
        Ok(Self { config: Arc::new(config), overrides })
    }

    /// The address an override sends `host:port` to, if any.
    pub fn override_for(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.overrides.get(&(host.to_ascii_lowercase(), port)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolve_override() {
        let o: ResolveOverride = "IMAP.sina.com:993=127.0.0.1:10993".parse().unwrap();
        assert_eq!(o.host, "imap.sina.com");
        assert_eq!(o.port, 993);
        assert_eq!(o.addr, "127.0.0.1:10993".parse().unwrap());
        for bad in ["imap.sina.com:993", "imap.sina.com=1.2.3.4:1", ":993=1.2.3.4:5", "h:99999=1.2.3.4:5", "h:1=nope"] {
            assert!(bad.parse::<ResolveOverride>().is_err(), "{bad}");
        }
    }
}
