//! The client's TLS configuration, built here and handed to reqwest whole
//! (`ClientBuilder::use_preconfigured_tls`), for one reason: the order of the cipher suites.
//!
//! Without AES instructions (many armv7 camera SoCs: Cortex-A7/A9), and in every 32-bit ARM
//! build (ring has no hardware AES code there), ring's AES-GCM runs in constant-time software
//! (bit-sliced AES with NEON, GHASH without carry-less multiply), many times slower than
//! ChaCha20-Poly1305, which needs only adds, rotates and xors. There the client lists
//! ChaCha20-Poly1305 first; where AES-GCM runs on AES instructions (x86 AES-NI + PCLMULQDQ,
//! aarch64 AES + PMULL) AES-GCM stays first, as it is faster there (on this x86: 0.14 s per GiB
//! against 0.68). `benches/cipher.sh` has the figures, docs/PERFORMANCE.md a run.
//!
//! What the client's order can and cannot force: the server picks the suite, and a server
//! that imposes its own order is not overridden (the suite it picks is verified and used as
//! any other). A rustls server follows the client's order unless it sets
//! `ignore_client_order`. Node (OpenSSL) does NOT by default: `https.createServer` prefers its
//! own order (AES-256-GCM first), and @tus/server behind node 20 / OpenSSL 3.0 answered
//! TLS_AES_256_GCM_SHA384 to a client listing ChaCha20 first (checked with `openssl s_client
//! -ciphersuites`); with `secureOptions: crypto.constants.SSL_OP_PRIORITIZE_CHACHA` it takes
//! ChaCha20 when the client lists it first (checked the same way). nginx
//! (`ssl_prefer_server_ciphers off`, its default) follows the client. Go's crypto/tls (tusd)
//! takes ChaCha20 when the client does not list AES-GCM first or the server itself lacks AES
//! hardware (Go 1.16+, golang/go#41181), whatever its own order.
//!
//! Everything else is what reqwest's own rustls set-up did before (reqwest 0.12,
//! `rustls-tls-native-roots`): ring as the provider, TLS 1.2 and 1.3, the system's roots
//! (unparsable ones skipped) plus `cloud.ca_file`, the device's certificate if provisioned,
//! SNI on, ALPN `http/1.1` only (no HTTP/2 is built in), the usual webpki verification.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, RootCertStore, SupportedCipherSuite};

use crate::config;

/// Whether ring's AES-GCM runs on AES instructions here: AES rounds and carry-less
/// multiplication (for GHASH) on x86 (AES-NI + PCLMULQDQ) and aarch64 (ARMv8 AES + PMULL).
/// Read once per client build; cheap (a cached cpuid or auxv read).
///
/// Never on 32-bit ARM, whatever the core: ring 0.17 has no hardware AES code for it (its
/// armv7 AES-GCM is bit-sliced AES and GHASH on NEON only; no `aesv8-armx` for 32-bit), so a
/// Cortex-A53 running an armv7 userland is as slow at AES-GCM as a Cortex-A7. Measured under
/// qemu-arm: with the AES instructions present (`-cpu max`) AES-GCM took 79-86 s per GiB
/// against ChaCha20-Poly1305's 6.7, as without them (`-cpu cortex-a7`: 87-108 against 7.5;
/// emulated, only the ratio means something: `benches/cipher.sh`).
pub fn aes_gcm_is_fast() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

fn is_chacha(s: &SupportedCipherSuite) -> bool {
    matches!(
        s.suite(),
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
    )
}

/// ring's provider with its suites in the order for this core: ring's own (AES-GCM first)
/// with AES, ChaCha20-Poly1305 first (per TLS version, the rest in ring's order) without.
pub fn provider(has_aes: bool) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    if !has_aes {
        // Stable: TLS 1.3 suites stay ahead of TLS 1.2 ones, each group keeps ring's order.
        p.cipher_suites.sort_by_key(|s| {
            (
                s.version().version != rustls::ProtocolVersion::TLSv1_3,
                !is_chacha(s),
            )
        });
    }
    p
}

/// The system's roots (as reqwest loaded them: unparsable ones skipped, an error only if the
/// store had certificates and none was usable) plus `cloud.ca_file`.
fn roots(cloud: &config::Cloud) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (ok, bad) = store.add_parsable_certificates(native.certs);
    if ok == 0 && bad > 0 {
        let why: Vec<String> = native.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no usable certificate in the system's root store{}{}",
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        ));
    }
    if let Some(ca) = &cloud.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("`cloud.ca_file`: cannot read {}: {e}", ca.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                format!(
                    "`cloud.ca_file`: {} is not a PEM certificate: {e}",
                    ca.display()
                )
            })?;
        if certs.is_empty() {
            return Err(format!(
                "`cloud.ca_file`: {} holds no PEM certificate",
                ca.display()
            ));
        }
        for c in certs {
            store.add(c).map_err(|e| {
                format!(
                    "`cloud.ca_file`: {} is not a usable CA certificate: {e}",
                    ca.display()
                )
            })?;
        }
    }
    Ok(store)
}

/// The device's certificate chain and key from `client_cert` + `client_key` (PEM, read by
/// `config`): every certificate, and the last key found (as reqwest's `Identity::from_pem`).
fn identity(pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let mut certs = Vec::new();
    let mut key = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| format!("invalid PEM: {e}"))?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => key = Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => key = Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => key = Some(PrivateKeyDer::Sec1(der.into())),
            _ => return Err("a PEM section that is neither a certificate nor a key".into()),
        }
    }
    match key {
        Some(key) if !certs.is_empty() => Ok((certs, key)),
        _ => Err("private key or certificate not found".into()),
    }
}

/// The rustls client configuration for `[cloud]`, its suites ordered for `has_aes`
/// ([`aes_gcm_is_fast`] in the daemon; a test passes both). An error names the file or key at
/// fault; `tus` makes it a `TusError::Setup` (this module does not use `tus`: no circle).
pub fn client_config(cloud: &config::Cloud, has_aes: bool) -> Result<rustls::ClientConfig, String> {
    let roots = roots(cloud)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider(has_aes)))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots);
    // Mutual TLS: the device's own certificate, beside the bearer token (never instead).
    let pem = cloud
        .client_identity_pem()
        .map_err(|(key, why)| format!("`{key}`: {why}"))?;
    let mut tls = match pem {
        Some(pem) => {
            let (certs, key) =
                identity(&pem).map_err(|why| format!("`cloud.client_key`: {why}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("`cloud.client_key`: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    tls.enable_sni = true;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_aes_chacha_comes_first_in_each_version_and_nothing_is_lost() {
        let with = provider(true).cipher_suites;
        let without = provider(false).cipher_suites;
        assert_eq!(with.len(), without.len());
        assert!(!is_chacha(&with[0]), "AES-GCM first with AES: {with:?}");
        assert_eq!(
            without[0].suite(),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        let first12 = without
            .iter()
            .find(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2)
            .unwrap();
        assert!(is_chacha(first12), "{without:?}");
        for s in &with {
            assert!(without.iter().any(|t| t.suite() == s.suite()));
        }
    }

    /// What this build detects where it runs, against what the kernel tells in /proc/cpuinfo
    /// (`aes` plus `pclmulqdq` on x86, `aes` plus `pmull` on aarch64; 32-bit ARM: never).
    #[test]
    fn detection_agrees_with_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let flags: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("flags") || l.starts_with("Features"))
            .and_then(|l| l.split(':').nth(1))
            .map(|f| f.split_whitespace().collect())
            .unwrap_or_default();
        let has = |f: &str| flags.contains(&f);
        eprintln!("aes_gcm_is_fast: {}", aes_gcm_is_fast());
        if cfg!(target_arch = "arm") {
            assert!(!aes_gcm_is_fast());
        } else if cfg!(target_arch = "x86_64") && has("sse2") {
            assert_eq!(
                aes_gcm_is_fast(),
                has("aes") && has("pclmulqdq"),
                "{flags:?}"
            );
        } else if cfg!(target_arch = "aarch64") && has("asimd") {
            assert_eq!(aes_gcm_is_fast(), has("aes") && has("pmull"), "{flags:?}");
        }
        // Anything else (qemu-user shows the host's /proc/cpuinfo): no comparison.
    }
}
