//! Issue 25: the support bundle (`cambackup report`, `GET /v1/report`), read back as support
//! would read it: unpacked by the system's `tar`, every file searched for what must not be
//! there (the token, the user ID, the device key, the card's file names) and for what must.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use testkit::camera::{toml_string, FakeCamera};
use testkit::tls::TestCa;
use testkit::tus::Receiver;

use crate::common::{bin, eventually, Rig, TOKEN};

const T: Duration = Duration::from_secs(30);

/// `cambackup report ARGS` into `dir/NAME`, unpacked with `tar`: each file's text by name.
fn bundle(rig: &Rig, dir: &Path, name: &str, args: &[&str]) -> BTreeMap<String, String> {
    let file = dir.join(name);
    let out = testkit::daemon::command(&bin())
        .arg("--socket")
        .arg(rig.daemon.socket())
        .arg("report")
        .arg("-o")
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.starts_with("wrote "), "{said}");
    let into = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&into).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&file)
        .arg("-C")
        .arg(&into)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(into.join("cambackup-report")).unwrap() {
        let e = e.unwrap();
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    files
}

#[tokio::test]
async fn the_support_bundle_holds_no_secret_and_no_file_name_unless_asked() {
    let cam = FakeCamera::new();
    let ca = TestCa::new();
    let device = ca.client_cert(cam.root(), "device");
    let key_pem = std::fs::read_to_string(&device.key).unwrap();
    cam.with(
        "cloud",
        "client_cert",
        &toml_string(&device.cert.to_string_lossy()),
    )
    .with(
        "cloud",
        "client_key",
        &toml_string(&device.key.to_string_lossy()),
    );
    // Names that must not leave without --with-names: one sent, one refused by the server
    // (its error names it), one deleted before upload (the log names it), a sidecar.
    let sent = cam.photo("IMG_SECRETNAME.JPG", 1000);
    let refused = cam.photo("VID_PRIVATENAME.MP4", 9000);
    for rel in [&sent, &refused] {
        cam.age_media(rel, Duration::from_secs(600));
    }
    cam.write_media("DCIM/100MEDIA/SIDECARNAME.THM", b"x");
    let rx = Receiver::builder()
        .token(TOKEN)
        .max_size(5000)
        .start()
        .await;
    let rig = Rig::start_with(cam, rx).await;
    rig.pair().await;
    // Consent off: a file that comes and goes is dropped while it waits.
    let gone = rig.cam.photo("IMG_GONENAME.JPG", 10);
    rig.cam.age_media(&gone, Duration::from_secs(600));
    eventually(T, "the third file queued", || async {
        rig.status().await["queue"]["pending"] == 3
    })
    .await;
    std::fs::remove_file(rig.cam.media_path(&gone)).unwrap();
    eventually(T, "the deleted file dropped", || async {
        rig.status().await["queue"]["skipped"] == 1
    })
    .await;
    rig.consent(true).await;
    rig.expect_uploaded(&[&sent], T).await;
    eventually(T, "the big file failed", || async {
        rig.status().await["queue"]["failed"] == 1
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let files = bundle(&rig, dir.path(), "plain.tar.gz", &[]);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "config.toml",
            "history.json",
            "log.txt",
            "queue.json",
            "status.json",
            "system.txt",
            "version.txt"
        ]
    );
    let all: String = files.values().cloned().collect::<Vec<_>>().join("\n");
    for secret in [
        TOKEN,
        "user-42",
        key_pem.lines().nth(1).unwrap(),
        "PRIVATE KEY",
        "SECRETNAME",
        "PRIVATENAME",
        "GONENAME",
        "SIDECARNAME",
        "100MEDIA",
    ] {
        assert!(
            !all.contains(secret),
            "the bundle holds `{secret}`:\n{}",
            files
                .iter()
                .filter(|(_, t)| t.contains(secret))
                .map(|(n, t)| format!("--- {n}\n{t}"))
                .collect::<String>()
        );
    }
    // What support needs is there.
    assert!(files["version.txt"].starts_with("cambackup "), "{files:?}");
    assert!(files["version.txt"].contains("kernel: Linux"), "{files:?}");
    assert!(files["config.toml"].contains("client_key = \"(set)\""));
    assert!(
        files["system.txt"].contains("card file system: "),
        "{}",
        files["system.txt"]
    );
    assert!(
        files["system.txt"].contains("bytes free of"),
        "{}",
        files["system.txt"]
    );
    let status: serde_json::Value = serde_json::from_str(&files["status.json"]).unwrap();
    assert_eq!(status["queue"]["failed"], 1);
    let queue: serde_json::Value = serde_json::from_str(&files["queue.json"]).unwrap();
    assert_eq!(queue["items"][0]["state"], "failed");
    assert_eq!(queue["items"][0]["storage_path"], "<name>");
    let history: serde_json::Value = serde_json::from_str(&files["history.json"]).unwrap();
    assert_eq!(history["uploads"], 1);
    assert!(
        files["log.txt"].contains("starting"),
        "{}",
        files["log.txt"]
    );
    assert!(
        files["log.txt"].contains("file deleted before upload"),
        "{}",
        files["log.txt"]
    );

    // Asked for, the names are there; the secrets still are not.
    let files = bundle(&rig, dir.path(), "named.tar.gz", &["--with-names"]);
    let all: String = files.values().cloned().collect::<Vec<_>>().join("\n");
    for name in ["IMG_SECRETNAME.JPG", "VID_PRIVATENAME.MP4", "GONENAME"] {
        assert!(all.contains(name), "no `{name}` with --with-names");
    }
    for secret in [TOKEN, "user-42", "PRIVATE KEY"] {
        assert!(!all.contains(secret), "the named bundle holds `{secret}`");
    }

    let (code, body) = rig
        .daemon
        .api("GET", "/v1/report?with_names=yes", None)
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_parameter");
}

/// The Wi-Fi network's name (issue 25) says where the camera was: the bundle leaves it out,
/// its SSID and BSSID, unless asked for with the file names.
#[tokio::test]
async fn the_support_bundle_leaves_out_the_wifi_networks_name_unless_asked() {
    use testkit::wpa::{FakeWpa, Network};
    let cam = FakeCamera::new();
    let wpa = FakeWpa::start(
        &cam.wpa_ctrl_dir(),
        "wlan0",
        Some(Network::named("HomeNetSecret", "02:00:00:5e:c2:e7")),
    );
    let rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "the status names the network", || async {
        rig.status().await["uplink"]["network_name"]["ssid"] == "HomeNetSecret"
    })
    .await;
    let (code, body) = rig
        .daemon
        .api(
            "PUT",
            "/v1/network",
            Some(serde_json::json!({"metered": true})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let files = bundle(&rig, dir.path(), "plain.tar.gz", &[]);
    for (name, text) in &files {
        for secret in ["HomeNetSecret", "02:00:00:5e:c2:e7", "5e:c2:e7"] {
            assert!(!text.contains(secret), "{name} holds `{secret}`:\n{text}");
        }
    }
    let status: serde_json::Value = serde_json::from_str(&files["status.json"]).unwrap();
    assert_eq!(status["uplink"]["network_name"], "<name>", "{status:#}");
    assert_eq!(status["uplink"]["metered_because"], "app", "{status:#}");
    let files = bundle(&rig, dir.path(), "named.tar.gz", &["--with-names"]);
    assert!(files["status.json"].contains("HomeNetSecret"));
    drop(wpa);
}
