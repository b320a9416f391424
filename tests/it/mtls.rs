//! Issue 27: device identity for a fleet. A camera maker provisions each device with its own
//! certificate (`cloud.client_cert`, `cloud.client_key`), which goes with every connection
//! beside the bearer token; the tier verifies it against the maker's CA and a CRL. What a user
//! (or the maker's support) would check: with the provisioned certificate the card is backed up;
//! with none, a foreign one or a revoked one nothing reaches the server, `status.attention`
//! says `certificate_refused` naming why, the queue stays as it was (nothing failed, nothing
//! lost), and once the device has a good certificate again every file goes up.
//!
//! The server is testkit's receiver behind rustls with a client-certificate verifier
//! ([`TestCa::server_config_verifying_clients`]); the tier's haproxy is checked the same way
//! in `cloud.rs`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::camera::{toml_string, FakeCamera};
use testkit::daemon::Daemon;
use testkit::tls::{ClientCert, TestCa};
use testkit::tus::Receiver;

use crate::common::{bin, eventually, Rig, TOKEN};

const T: Duration = Duration::from_secs(30);

/// The files on the card in every test.
const FILES: [(&str, u64); 3] = [("A.JPG", 300_000), ("B.JPG", 1_200_000), ("C.JPG", 50_000)];

/// The identity the daemon is configured with.
enum Identity<'a> {
    None,
    Cert(&'a ClientCert),
}

/// A receiver that requires a device certificate of `maker` not revoked by `revoked`, and a
/// camera with three photos, trusting the receiver's CA.
async fn tier(maker: &TestCa, revoked: &[&ClientCert]) -> (FakeCamera, Receiver, Vec<String>) {
    let cam = FakeCamera::new();
    let server_ca = TestCa::new();
    let pem = server_ca.write_pem(cam.root());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let crl = (!revoked.is_empty()).then(|| maker.crl_der(revoked));
    let rx = Receiver::builder()
        .token(TOKEN)
        .listener(listener)
        .tls(server_ca.server_config_verifying_clients(&["localhost"], maker, crl))
        .base_url(format!("https://localhost:{port}"))
        .start()
        .await;
    cam.with("cloud", "ca_file", &toml_string(&pem.to_string_lossy()))
        .with("cloud", "retry_max_secs", "2");
    let rels = FILES.iter().map(|(n, len)| cam.photo(n, *len)).collect();
    (cam, rx, rels)
}

/// Writes the config with `identity` and (re)starts the daemon on it.
fn configure(cam: &FakeCamera, rx: &Receiver, identity: Identity) {
    match identity {
        Identity::None => {
            cam.without("cloud", "client_cert")
                .without("cloud", "client_key");
        }
        Identity::Cert(c) => {
            cam.with("cloud", "client_cert", &path(&c.cert)).with(
                "cloud",
                "client_key",
                &path(&c.key),
            );
        }
    }
    cam.write_config(&rx.url());
}

fn path(p: &Path) -> String {
    toml_string(&p.to_string_lossy())
}

fn attention<'a>(status: &'a Value, code: &str) -> Option<&'a Value> {
    status["attention"]
        .as_array()?
        .iter()
        .find(|a| a["code"] == code)
}

/// Starts the daemon with `identity`, which the tier refuses: the refusal is shown naming
/// `alert`, nothing reaches the server, nothing is failed or lost. Then the device gets the
/// provisioned certificate and the whole card goes up.
async fn refused_then_fixed(
    cam: FakeCamera,
    rx: Receiver,
    rels: Vec<String>,
    identity: Identity<'_>,
    good: &ClientCert,
    alert: &str,
) {
    configure(&cam, &rx, identity);
    let mut rig = Rig {
        daemon: Daemon::start(&bin(), &cam.config_path()).await,
        cam,
        rx,
    };
    rig.go().await;
    eventually(T, "status.attention says certificate_refused", || async {
        attention(&rig.status().await, "certificate_refused").is_some()
    })
    .await;
    let status = rig.status().await;
    let shown = attention(&status, "certificate_refused").expect("still shown");
    let message = shown["message"].as_str().unwrap();
    assert!(
        message.contains(alert),
        "the message names the alert {alert}: {message}"
    );
    assert!(
        rig.rx.refused_handshakes() > 0,
        "the daemon tried, and the handshake was refused"
    );
    assert!(
        rig.rx.requests().is_empty(),
        "no request may pass a refused handshake:\n{}",
        rig.rx.request_summary()
    );
    // Tried again under the back-off, each file still waiting: none failed, none skipped.
    eventually(T, "a second refused attempt", || async {
        rig.rx.refused_handshakes() >= 2
    })
    .await;
    assert!(rig.items(Some("failed")).await.is_empty());
    assert!(rig.items(Some("done")).await.is_empty());
    let waiting = rig.items(None).await;
    assert_eq!(waiting.len(), rels.len(), "{waiting:?}");
    assert!(
        waiting
            .iter()
            .all(|i| matches!(i["state"].as_str(), Some("pending" | "uploading"))),
        "{waiting:?}"
    );

    // The maker's support provisions the device again: everything goes up, and the note goes.
    configure(&rig.cam, &rig.rx, Identity::Cert(good));
    rig.daemon.restart().await;
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    rig.expect_uploaded(&rels, T).await;
    assert_eq!(rig.rx.creations(), rels.len(), "one creation per file");
    eventually(T, "the attention note goes", || async {
        attention(&rig.status().await, "certificate_refused").is_none()
    })
    .await;
}

#[tokio::test]
async fn uploads_go_with_the_provisioned_certificate() {
    let maker = TestCa::new();
    let (cam, rx, rels) = tier(&maker, &[]).await;
    let device = maker.client_cert(cam.root(), "device");
    configure(&cam, &rx, Identity::Cert(&device));
    let rig = Rig {
        daemon: Daemon::start(&bin(), &cam.config_path()).await,
        cam,
        rx,
    };
    rig.go().await;
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    rig.expect_uploaded(&rels, T).await;
    // Beside the token, not instead of it.
    for r in rig.rx.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(rig.rx.refused_handshakes(), 0);
    assert!(attention(&rig.status().await, "certificate_refused").is_none());
}

#[tokio::test]
async fn a_device_without_a_certificate_is_refused_and_loses_nothing() {
    let maker = TestCa::new();
    let (cam, rx, rels) = tier(&maker, &[]).await;
    let good = maker.client_cert(cam.root(), "device");
    refused_then_fixed(cam, rx, rels, Identity::None, &good, "CertificateRequired").await;
}

#[tokio::test]
async fn a_foreign_certificate_is_refused_and_loses_nothing() {
    let maker = TestCa::new();
    let (cam, rx, rels) = tier(&maker, &[]).await;
    let good = maker.client_cert(cam.root(), "device");
    let foreign = TestCa::named("another maker's CA").client_cert(cam.root(), "foreign");
    refused_then_fixed(cam, rx, rels, Identity::Cert(&foreign), &good, "UnknownCA").await;
}

/// A certificate whose issuer has the maker's CA's name but another key: its signature fails.
#[tokio::test]
async fn a_certificate_forged_in_the_makers_name_is_refused_and_loses_nothing() {
    let maker = TestCa::new();
    let (cam, rx, rels) = tier(&maker, &[]).await;
    let good = maker.client_cert(cam.root(), "device");
    let forged = TestCa::new().client_cert(cam.root(), "forged");
    refused_then_fixed(
        cam,
        rx,
        rels,
        Identity::Cert(&forged),
        &good,
        "DecryptError",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_loses_nothing() {
    let maker = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let stolen = maker.client_cert(dir.path(), "stolen");
    let (cam, rx, rels) = tier(&maker, &[&stolen]).await;
    let good = maker.client_cert(cam.root(), "device");
    refused_then_fixed(
        cam,
        rx,
        rels,
        Identity::Cert(&stolen),
        &good,
        "CertificateRevoked",
    )
    .await;
}

#[tokio::test]
async fn a_key_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let maker = TestCa::new();
    let (cam, rx, _) = tier(&maker, &[]).await;
    let device = maker.client_cert(cam.root(), "device");
    std::fs::set_permissions(&device.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    configure(&cam, &rx, Identity::Cert(&device));
    let out = testkit::daemon::command(&bin())
        .args(["check-config", "--config"])
        .arg(cam.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cloud.client_key") && err.contains(&device.key.display().to_string()),
        "names the key and the file: {err}"
    );
}
