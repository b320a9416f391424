//! Issue 25: pairing checks the token. One authenticated `HEAD` of the endpoint: a server that
//! refuses the token (401) refuses the pairing with a message that says so, and nothing
//! changes (an earlier account stays paired); a server that takes it says so; offline, the
//! pairing is made and the answer says the token is unchecked.

use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;

use crate::common::{bin, pair_as, Rig, TOKEN};

// Multi-threaded: the CLI below runs blocking on one worker while the receiver (on this
// runtime) answers the token check on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_server_refuses_is_refused_at_pairing_and_nothing_changes() {
    let cam = FakeCamera::new();
    let rig = Rig::start(cam).await;

    let (code, body) = pair_as(&rig.daemon, "user-42", "a-mistyped-token").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "token_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("refused this token (401") && message.contains("nothing was paired"),
        "{message}"
    );
    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["paired"], false, "{account}");
    // One HEAD of the endpoint with the token, nothing else: no creation, no metadata.
    let checks = rig.rx.token_checks();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(
        checks[0].authorization.as_deref(),
        Some("Bearer a-mistyped-token")
    );
    assert_eq!(checks[0].status, 401);
    assert!(rig.rx.requests().is_empty(), "{}", rig.rx.request_summary());

    // The right token: paired, and the answer says the server took it.
    let (code, body) = pair_as(&rig.daemon, "user-42", TOKEN).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token_check"]["checked"], true, "{body}");
    assert_eq!(body["paired"], true, "{body}");

    // A wrong token for another account afterwards: refused, the first account stays.
    let (code, body) = pair_as(&rig.daemon, "someone-else", "not-theirs").await;
    assert_eq!(code, 400, "{body}");
    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["user_id"], "user-42", "{account}");
    assert_eq!(account["status"], "ok", "{account}");

    // The CLI says the same.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "still-wrong\n").unwrap();
    let out = testkit::daemon::command(&bin())
        .arg("--socket")
        .arg(rig.daemon.socket())
        .args([
            "pair",
            "--user-id",
            "user-42",
            "--token-file",
            token_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused this token"), "{stderr}");
}

#[tokio::test]
async fn offline_the_pairing_is_made_and_says_the_token_is_unchecked() {
    let cam = FakeCamera::new();
    // Nothing listens there: the server cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = cam.write_config(&format!("http://127.0.0.1:{port}/files/"));
    let daemon = Daemon::start(&bin(), &config).await;
    let (code, body) = pair_as(&daemon, "user-42", TOKEN).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["paired"], true, "{body}");
    assert_eq!(body["token_check"]["checked"], false, "{body}");
    let message = body["token_check"]["message"].as_str().unwrap();
    assert!(
        message.contains("not checked yet") && message.contains("could not be reached"),
        "{message}"
    );
}
