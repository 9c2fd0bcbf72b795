//! Throwaway test CAs and the certificates they sign, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA that can issue server and client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA whose certificate is written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("authcode-vault test CA {name}"));
        let cert = params.self_signed(&key).expect("CA cert");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write CA");
        Self { issuer: Issuer::new(params, key), cert: path }
    }

    /// A certificate for `names` (DNS names or IP addresses), written under `dir`.
    pub fn issue(&self, dir: &Path, file_stem: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        let issued = Issued { cert: dir.join(format!("{file_stem}.pem")), key: dir.join(format!("{file_stem}.key")) };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }
}

/// The provider side: a CA and Dovecot's certificate for the provider hosts.
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// A CA, and a certificate for `hosts` signed by it, all under `dir`.
    pub fn generate(dir: &Path, hosts: &[&str]) -> Self {
        let ca = TestCa::new(dir, "provider");
        let issued = ca.issue(dir, "provider-server", hosts);
        Self { ca_cert: ca.cert, server_cert: issued.cert, server_key: issued.key }
    }
}
