//! The daemon as systemd and an operator see it: readiness, watchdog, graceful shutdown, config
//! errors, and logs that keep the user's identity out.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::daemon::{command, Daemon, Signal};
use testkit::tus::Receiver;

use crate::common::{bin, db, eventually, Rig, TOKEN};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn notifies_systemd_ready_and_pings_the_watchdog() {
    let cam = FakeCamera::new();
    let rx = Receiver::start().await;
    let config = cam.write_config(&rx.url());
    let sock_path = cam.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let notify = sock_path.to_string_lossy().into_owned();
    let _daemon = Daemon::start_with_env(
        &bin(),
        &config,
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    )
    .await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 2) {
        assert!(Instant::now() < deadline, "notifications so far: {seen:?}");
        // A signal to the test process (another test's child ending) interrupts a blocking
        // receive: not a missing notification (CI saw EINTR here under qemu-arm).
        let n = match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("a notification"),
        };
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
}

#[tokio::test]
async fn sigterm_mid_upload_exits_within_5s_and_keeps_the_servers_offset() {
    let cam = FakeCamera::new();
    cam.with("cloud", "chunk_size_mib", "1");
    let big = cam.photo("BIG.JPG", 200 * 1024 * 1024);
    cam.age_media(&big, Duration::from_secs(600));
    // Slow the server down so the upload is surely in flight when the signal comes: the first
    // PATCH stalls half-way (a PATCH carries one 1 MiB chunk, so the stall must come before
    // 1 MiB; the daemon gives up on it after stall_secs, 3 s, long after the signal).
    let rx = Receiver::builder()
        .token(TOKEN)
        .without_checksum()
        .start()
        .await;
    rx.inject(testkit::tus::Fault::stall_after(512 * 1024, Duration::from_secs(30)).times(1));
    let mut rig = Rig::start_with(cam, rx).await;
    rig.go().await;
    eventually(T, "uploading", || async {
        rig.status().await["state"] == "uploading"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    rig.daemon.kill(Signal::Term);
    let status = rig
        .daemon
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exited");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(status.success(), "{status:?}");
    let conn = db(&rig.cam.state_dir());
    let (state, url): (String, Option<String>) = conn
        .query_row(
            "SELECT state, upload_url FROM items WHERE storage_path = ?1",
            [&big],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        state, "pending",
        "back in the queue, not lost and not 'uploading'"
    );
    assert!(
        url.is_some(),
        "the server upload is remembered for the resume"
    );
    assert!(rig.daemon.log().contains("stopped"));
}

#[tokio::test]
async fn logs_at_info_never_carry_the_user_id_token_or_serial() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 10_000);
    let rx = Receiver::builder().token(TOKEN).start().await;
    let config = cam.write_config(&rx.url());
    let daemon = Daemon::start_with_env(&bin(), &config, &[("CAMBACKUP_LOG", "info")]).await;
    let (code, _) = daemon
        .api(
            "PUT",
            "/v1/account",
            Some(json!({"user_id": "user-42", "token": TOKEN})),
        )
        .await;
    assert_eq!(code, 200);
    daemon
        .api("PATCH", "/v1/settings", Some(json!({"auto_upload": true})))
        .await;
    rx.wait_for_completed(1, T).await;
    assert!(rx.completed(&a).is_some());
    daemon.api("DELETE", "/v1/account", None).await;
    let log = daemon.log();
    assert!(
        log.contains("uploaded"),
        "the log says what happened:\n{log}"
    );
    for secret in ["user-42", TOKEN, "TEST0001"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[tokio::test]
async fn a_bad_config_exits_2_naming_the_key_the_file_and_the_line() {
    let cam = FakeCamera::new();
    cam.with("media", "setle_secs", "3");
    let config = cam.write_config("http://127.0.0.1:9/files/");
    for cmd in ["check-config", "daemon"] {
        let out = command(&bin())
            .args([cmd, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(err.contains("media.setle_secs"), "{cmd}: {err}");
        assert!(err.contains(&config.display().to_string()), "{cmd}: {err}");
    }
    let cam = FakeCamera::new();
    cam.with("cloud", "endpoint", "\"http://upload.example.com/files/\"");
    let config = cam.write_config("http://127.0.0.1:9/files/");
    let out = command(&bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cloud.endpoint"), "{err}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 2000);
    let rig = Rig::start(cam).await;
    // The second one has a socket of its own: only the state directory is shared.
    let other_socket = rig.cam.root().join("run/second.sock");
    let text = std::fs::read_to_string(rig.cam.config_path()).unwrap();
    let sock = rig.cam.socket_path().display().to_string();
    assert!(text.contains(&sock));
    let second = rig.cam.root().join("second.toml");
    std::fs::write(
        &second,
        text.replace(&sock, &other_socket.display().to_string()),
    )
    .unwrap();
    let mut child = command(&bin())
        .args(["daemon", "--config"])
        .arg(&second)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second daemon on the same state.dir kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("another cambackup daemon"), "{err}");
    assert!(
        err.contains(&rig.cam.state_dir().display().to_string()),
        "the message names the directory: {err}"
    );
    assert!(!other_socket.exists(), "it opened a socket: {err}");
    // The first one goes on as before.
    rig.go().await;
    rig.expect_uploaded(&[a.as_str()], T).await;
}

#[tokio::test]
async fn a_relative_state_dir_or_control_socket_is_refused_naming_the_key() {
    // Under systemd the working directory is `/`: a relative path lands there, not in the
    // directory the maker meant. Refused like a relative `media.root`.
    for (section, key, value) in [
        ("state", "state.dir", "\"var/lib/cambackup\""),
        ("control", "control.socket", "\"run/control.sock\""),
    ] {
        let cam = FakeCamera::new();
        cam.with(section, key.split_once('.').unwrap().1, value);
        let config = cam.write_config("http://127.0.0.1:9/files/");
        for cmd in ["check-config", "daemon"] {
            let out = command(&bin())
                .args([cmd, "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {key}: {err}");
            assert!(err.contains(key), "{cmd}: {err}");
            assert!(err.contains("absolute"), "{cmd}: {err}");
        }
    }
}

#[tokio::test]
async fn the_cli_names_the_socket_when_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-home.sock");
    let out = command(&bin())
        .arg("status")
        .arg("--socket")
        .arg(&sock)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_reader_that_stops_early_is_not_an_error() {
    // `cambackup history | head -1` on a long history: stdout closes under the CLI.
    let cam = FakeCamera::new();
    for i in 0..40 {
        cam.photo(&format!("IMG_{i:04}.JPG"), 100);
    }
    let rig = Rig::start(cam).await;
    rig.go().await;
    rig.rx.wait_for_completed(40, Duration::from_secs(30)).await;
    let mut child = command(&bin())
        .args(["--socket"])
        .arg(rig.cam.socket_path())
        .args(["history"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read nothing and close the pipe, like `head` does once it has its line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
