//! INTERFACE.md section 6: "TLS is verified always (system roots plus `ca_file`)". These tests run
//! the real [`tus::Client`] against a real rustls server on 127.0.0.1, with a CA and leaf
//! certificates made at test time by rcgen (no key is committed):
//! - a certificate from a CA nobody trusts is refused before any request reaches the server;
//! - the same server is accepted once `cloud.ca_file` holds that CA;
//! - a certificate for another host name, or an expired one, is refused even with the CA trusted;
//! - the client's suite order (issue 29): without AES instructions a server that follows the
//!   client's order settles on ChaCha20-Poly1305, with them on AES-GCM.
//!
//! Each refusal is checked on both ends: the client's error names the certificate problem, the
//! server saw a failed handshake, and its handler was never called.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config;
use crate::secret::Secret;
use crate::upload::tls;
use crate::upload::tus::{self, TusError};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert, key }
    }

    /// Writes the CA certificate as PEM into `dir`, as a camera maker would ship it.
    fn write_pem(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// What the server saw.
#[derive(Default)]
struct Counts {
    handshakes_ok: AtomicUsize,
    handshakes_failed: AtomicUsize,
    /// Requests that reached the HTTP handler.
    requests: AtomicUsize,
    /// The suite of each completed handshake, in order.
    suites: std::sync::Mutex<Vec<rustls::CipherSuite>>,
}

/// A TLS server on 127.0.0.1 that answers every request like a tus endpoint's `OPTIONS`.
struct Server {
    port: u16,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(leaf: &Leaf, ca: &Ca) -> Server {
        // The provider named explicitly: the process default may be unset in tests.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![
            CertificateDer::from(leaf.cert.der().to_vec()),
            CertificateDer::from(ca.cert.der().to_vec()),
        ];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.serialize_der()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        // rustls's default, named: the server takes the first suite of the client's list that
        // it supports (it supports all of ring's), so the client's order decides.
        tls.ignore_client_order = false;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            if let Some(suite) = tls.get_ref().1.negotiated_cipher_suite() {
                                c.suites.lock().unwrap().push(suite.suite());
                            }
                            c.handshakes_ok.fetch_add(1, Ordering::SeqCst);
                            tls
                        }
                        Err(_) => {
                            c.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        c.requests.fetch_add(1, Ordering::SeqCst);
                        async move {
                            Response::builder()
                                .status(204)
                                .header("tus-resumable", "1.0.0")
                                .header("tus-version", "1.0.0")
                                .header("tus-extension", "creation,termination")
                                .header("tus-max-size", "1073741824")
                                .body(Full::new(Bytes::new()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Server { port, counts, task }
    }

    fn endpoint(&self, host: &str) -> String {
        format!("https://{host}:{}/files/", self.port)
    }

    /// Waits (briefly) until the server has seen `n` failed handshakes: the client may return
    /// its error before the server's side of the handshake has ended.
    async fn wait_failed_handshakes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.counts.handshakes_failed.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the server saw no failed handshake: did the client connect at all?"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn assert_refused(&self) {
        assert_eq!(self.counts.handshakes_ok.load(Ordering::SeqCst), 0);
        assert_eq!(
            self.counts.requests.load(Ordering::SeqCst),
            0,
            "a request reached the handler over a connection that should have been refused"
        );
    }
}

fn cloud(endpoint: &str, ca_file: Option<std::path::PathBuf>) -> config::Cloud {
    config::check_endpoint(endpoint).expect("the test endpoint passes the config check");
    config::Cloud {
        endpoint: endpoint.into(),
        ca_file,
        stall_secs: 5,
        ..Default::default()
    }
}

fn token() -> Secret {
    Secret::new("tls-test-token")
}

/// Asks the endpoint with a fresh client; returns the outcome.
async fn options(cloud: &config::Cloud) -> Result<Arc<tus::Capabilities>, TusError> {
    let client = tus::Client::new(cloud).expect("the client builds");
    client.options(&cloud.endpoint, &token()).await
}

/// The error is a network error whose cause is the peer's certificate, naming `why`.
fn assert_certificate_error(result: Result<Arc<tus::Capabilities>, TusError>, why: &str) {
    let err = result.expect_err("the connection must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, TusError::Network { .. }),
        "expected a network (TLS) error, got: {msg}"
    );
    assert!(
        msg.contains("invalid peer certificate") && msg.contains(why),
        "the error should say the certificate is bad ({why}): {msg}"
    );
}

#[tokio::test]
async fn unknown_ca_is_refused_before_any_request() {
    let ca = Ca::new("cambackup test CA (not trusted)");
    let server = Server::start(&ca.leaf(&["localhost", "127.0.0.1"], false), &ca).await;

    for host in ["localhost", "127.0.0.1"] {
        let cloud = cloud(&server.endpoint(host), None);
        assert_certificate_error(options(&cloud).await, "UnknownIssuer");
    }
    server.wait_failed_handshakes(2).await;
    server.assert_refused();
}

#[tokio::test]
async fn ca_file_of_another_ca_does_not_help() {
    let ca = Ca::new("cambackup test CA (server's)");
    let other = Ca::new("cambackup test CA (configured)");
    let server = Server::start(&ca.leaf(&["localhost"], false), &ca).await;
    let dir = tempfile::tempdir().unwrap();

    let cloud = cloud(
        &server.endpoint("localhost"),
        Some(other.write_pem(dir.path())),
    );
    assert_certificate_error(options(&cloud).await, "UnknownIssuer");
    server.wait_failed_handshakes(1).await;
    server.assert_refused();
}

#[tokio::test]
async fn ca_file_makes_the_server_trusted() {
    let ca = Ca::new("cambackup test CA");
    let server = Server::start(&ca.leaf(&["localhost", "127.0.0.1"], false), &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(dir.path());

    for host in ["localhost", "127.0.0.1"] {
        let cloud = cloud(&server.endpoint(host), Some(pem.clone()));
        let caps = options(&cloud)
            .await
            .unwrap_or_else(|e| panic!("{host}: the trusted server must be accepted: {e}"));
        assert!(caps.has("creation") && caps.termination(), "{caps:?}");
        assert_eq!(caps.max_size, Some(1 << 30));
    }
    assert_eq!(server.counts.requests.load(Ordering::SeqCst), 2);
    assert_eq!(server.counts.handshakes_failed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn wrong_host_name_is_refused_even_with_the_ca_trusted() {
    let ca = Ca::new("cambackup test CA");
    // Valid, from the trusted CA, but for another host.
    let server = Server::start(&ca.leaf(&["cloud.example.com", "10.0.0.1"], false), &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = ca.write_pem(dir.path());

    for host in ["localhost", "127.0.0.1"] {
        let cloud = cloud(&server.endpoint(host), Some(pem.clone()));
        assert_certificate_error(options(&cloud).await, "not valid for name");
    }
    server.wait_failed_handshakes(2).await;
    server.assert_refused();
}

#[tokio::test]
async fn expired_certificate_is_refused_even_with_the_ca_trusted() {
    let ca = Ca::new("cambackup test CA");
    let server = Server::start(&ca.leaf(&["localhost"], true), &ca).await;
    let dir = tempfile::tempdir().unwrap();

    let cloud = cloud(
        &server.endpoint("localhost"),
        Some(ca.write_pem(dir.path())),
    );
    assert_certificate_error(options(&cloud).await, "certificate expired");
    server.wait_failed_handshakes(1).await;
    server.assert_refused();
}

/// The suite the server settled on for a client built with `has_aes`.
async fn negotiated(server: &Server, cloud: &config::Cloud, has_aes: bool) -> rustls::CipherSuite {
    let tls = tls::client_config(cloud, has_aes).expect("the TLS configuration builds");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let resp = http
        .request(reqwest::Method::OPTIONS, &cloud.endpoint)
        .send()
        .await
        .expect("the trusted server answers");
    assert_eq!(resp.status(), 204);
    *server.counts.suites.lock().unwrap().last().unwrap()
}

#[tokio::test]
async fn without_aes_instructions_chacha20_is_negotiated_with_them_aes_gcm() {
    use rustls::CipherSuite as S;
    let ca = Ca::new("cambackup test CA");
    let server = Server::start(&ca.leaf(&["127.0.0.1"], false), &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(
        &server.endpoint("127.0.0.1"),
        Some(ca.write_pem(dir.path())),
    );

    assert_eq!(
        negotiated(&server, &cloud, false).await,
        S::TLS13_CHACHA20_POLY1305_SHA256,
        "a core without AES: ChaCha20-Poly1305"
    );
    let with = negotiated(&server, &cloud, true).await;
    assert!(
        matches!(
            with,
            S::TLS13_AES_256_GCM_SHA384 | S::TLS13_AES_128_GCM_SHA256
        ),
        "a core with AES: AES-GCM, not {with:?}"
    );

    // The daemon's own client (tus::Client) makes the choice for the core it runs on.
    options(&cloud)
        .await
        .expect("the trusted server must be accepted");
    let daemon = *server.counts.suites.lock().unwrap().last().unwrap();
    let want = if tls::aes_gcm_is_fast() {
        with
    } else {
        S::TLS13_CHACHA20_POLY1305_SHA256
    };
    assert_eq!(
        daemon,
        want,
        "aes_gcm_is_fast() = {}",
        tls::aes_gcm_is_fast()
    );
    assert_eq!(server.counts.handshakes_ok.load(Ordering::SeqCst), 3);
}
