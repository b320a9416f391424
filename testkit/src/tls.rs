//! A certificate authority made at test time (no key is committed) and TLS server configs
//! signed by it, for receivers that are not on loopback: the product speaks plain http only to
//! loopback hosts, so a test server elsewhere needs TLS, trusted through `cloud.ca_file`.
//!
//! The same CA plays the camera maker's for mutual TLS: it issues device certificates
//! ([`TestCa::client_cert`], written as `cloud.client_cert`/`cloud.client_key` expect them),
//! revokes them in a CRL ([`TestCa::crl_pem`]), and makes server configs that require a device
//! certificate and verify it against the CA and the CRL
//! ([`TestCa::server_config_verifying_clients`]), as the tier's balancer does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The serial number of the next certificate issued (a CRL names certificates by it).
    next_serial: AtomicU64,
}

/// A device certificate the CA issued, written to files as the daemon's config names them.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate (PEM): `cloud.client_cert`.
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600): `cloud.client_key`.
    pub key: PathBuf,
    /// Its serial number, by which a CRL revokes it.
    pub serial: u64,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> TestCa {
        TestCa::named("cambackup test CA")
    }

    /// A fresh CA with this common name. Two CAs of the same name are told apart only by
    /// their keys: a certificate of one, checked against the other, fails its signature check
    /// (a forgery in the maker's name), where another name is an unknown issuer.
    pub fn named(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert,
            key,
            next_serial: AtomicU64::new(1000 + fastrand::u64(..1 << 40)),
        }
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// The CA certificate, DER.
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert.der().to_vec())
    }

    /// Issues a device certificate named `name` (its common name) and writes it as
    /// `dir/NAME.crt` and `dir/NAME.key` (the key mode 0600, as the daemon requires).
    pub fn client_cert(&self, dir: &Path, name: &str) -> ClientCert {
        use std::os::unix::fs::PermissionsExt as _;
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let serial = self.serial();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = KeyPair::generate().expect("client key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("client certificate");
        let out = ClientCert {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            serial,
        };
        std::fs::write(&out.cert, cert.pem()).expect("write the client certificate");
        std::fs::write(&out.key, key.serialize_pem()).expect("write the client key");
        std::fs::set_permissions(&out.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the client key");
        out
    }

    /// A CRL of this CA revoking `revoked`, DER.
    pub fn crl_der(&self, revoked: &[&ClientCert]) -> Vec<u8> {
        self.crl(revoked).der().to_vec()
    }

    /// The same CRL, PEM (for a balancer's `crl-file`).
    pub fn crl_pem(&self, revoked: &[&ClientCert]) -> String {
        self.crl(revoked).pem().expect("CRL PEM")
    }

    fn crl(&self, revoked: &[&ClientCert]) -> rcgen::CertificateRevocationList {
        let now = rcgen::date_time_ymd(2024, 1, 1);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2999, 1, 1),
            crl_number: rcgen::SerialNumber::from(self.serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(c.serial),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.cert, &self.key).expect("CRL")
    }

    /// Writes the CA certificate as `dir/ca.pem` (for `cloud.ca_file`).
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).expect("write ca.pem");
        path
    }

    /// A rustls server config with a certificate for `names` (DNS names or IP addresses).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_leaf(names);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// Like [`TestCa::server_config`], and the server requires a client certificate issued by
    /// `clients` (the maker's CA) and not revoked by `crl` (a CRL of that CA, DER): a client
    /// with none, with one of another CA, or with a revoked one fails the handshake with an
    /// alert naming why (`CertificateRequired`, `UnknownCA`, `CertificateRevoked`).
    pub fn server_config_verifying_clients(
        &self,
        names: &[&str],
        clients: &TestCa,
        crl: Option<Vec<u8>>,
    ) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_leaf(names);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(clients.der()).expect("client CA");
        let mut verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
        if let Some(crl) = crl {
            verifier = verifier
                .with_crls([rustls::pki_types::CertificateRevocationListDer::from(crl)])
                .only_check_end_entity_revocation();
        }
        let verifier = verifier.build().expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate");
        Arc::new(config)
    }

    /// A server certificate for `names` and its key, as one PEM (chain first): the file a
    /// balancer's `crt` takes.
    pub fn write_server_pem(&self, dir: &Path, names: &[&str]) -> PathBuf {
        let (chain, key) = self.server_leaf(names);
        let mut pem = String::new();
        for c in &chain {
            pem.push_str(&pem_block("CERTIFICATE", c.as_ref()));
        }
        pem.push_str(&pem_block("PRIVATE KEY", key.secret_der()));
        let path = dir.join("server.pem");
        std::fs::write(&path, pem).expect("write server.pem");
        path
    }

    /// A leaf certificate for `names` signed by this CA, with the chain to send.
    fn server_leaf(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        let chain = vec![CertificateDer::from(cert.der().to_vec()), self.der()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key)
    }
}

/// The provider named explicitly: the process default may be unset in tests.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One PEM block, 64 base64 characters a line.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
