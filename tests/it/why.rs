//! Issue 25: what the user sees. Why a file is or is not backed up (`GET /v1/files/{path}`,
//! `cambackup why`), every entry the scan left out counted (`status.skipped`), and when the card
//! is safe to format (`status.card.safe_to_format`), against the real daemon.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use testkit::camera::FakeCamera;
use testkit::tus::{Fault, Receiver};

use crate::common::{bin, eventually, slow_receiver, Rig, BIG, TOKEN};

const T: Duration = Duration::from_secs(30);
const OLD: Duration = Duration::from_secs(600);

/// `GET /v1/files/{path}`, the path sent as one percent-encoded segment, as the spec says.
async fn why(rig: &Rig, path: &str) -> (u16, Value) {
    let mut enc = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    rig.daemon
        .api("GET", &format!("/v1/files/{enc}"), None)
        .await
}

/// The reason code of a file the daemon answers for.
async fn code(rig: &Rig, path: &str) -> String {
    let (status, body) = why(rig, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["reason"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_file_in_each_state_answers_its_reason_and_nothing_is_skipped_silently() {
    let cam = FakeCamera::new();
    // A file written now stays unsettled for the whole test.
    cam.with("media", "settle_secs", "120");
    let a = cam.photo("A.JPG", 1000);
    let big = cam.photo("BIG.MP4", 9000);
    for rel in [&a, &big] {
        cam.age_media(rel, OLD);
    }
    // What the scan leaves out: a sidecar (not a photo or video type), a hidden file and a
    // hidden directory (media.exclude), a link, a FIFO.
    cam.write_media("DCIM/100MEDIA/A.THM", b"thumb");
    cam.write_media("DCIM/100MEDIA/.B.JPG", b"hidden");
    cam.write_media("DCIM/.trash/C.JPG", b"trashed");
    std::os::unix::fs::symlink("/etc/hostname", cam.media_path("DCIM/100MEDIA/L.JPG")).unwrap();
    let fifo = std::ffi::CString::new(
        cam.media_path("DCIM/100MEDIA/P.JPG")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let rx = Receiver::builder()
        .token(TOKEN)
        .max_size(5000)
        .start()
        .await;
    let rig = Rig::start_with(cam, rx).await;

    eventually(T, "the card scanned", || async {
        !rig.status().await["skipped"]["scanned_at"].is_null()
    })
    .await;
    let s = rig.status().await;
    let k = &s["skipped"];
    assert_eq!(
        (
            &k["excluded_type"],
            &k["excluded_path"],
            &k["link"],
            &k["not_regular_file"],
            &k["unreadable"]
        ),
        (&1.into(), &2.into(), &1.into(), &1.into(), &0.into()),
        "{s:#}"
    );
    for (path, want) in [
        ("DCIM/100MEDIA/A.THM", "excluded_type"),
        ("DCIM/100MEDIA/.B.JPG", "excluded_path"),
        ("DCIM/.trash/C.JPG", "excluded_path"),
        ("DCIM/100MEDIA/L.JPG", "link"),
        ("DCIM/100MEDIA/P.JPG", "not_regular_file"),
        ("/etc/passwd", "outside_media_root"),
        ("DCIM/../../etc/passwd", "outside_media_root"),
    ] {
        let (status, body) = why(&rig, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["reason"]["code"], want, "{path}: {body:#}");
        assert_eq!(body["state"], "not_queued", "{path}: {body:#}");
        assert!(body["id"].is_null(), "{body}");
    }
    // Never heard of and not there: 404, naming it.
    let (status, body) = why(&rig, "DCIM/100MEDIA/NOPE.JPG").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "no_such_file", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DCIM/100MEDIA/NOPE.JPG"),
        "{body}"
    );

    // Unpaired, then paired without consent: the queued file says what it waits for.
    let (_, body) = why(&rig, &a).await;
    assert_eq!(
        (&body["state"], &body["reason"]["code"]),
        (&"pending".into(), &"unpaired".into()),
        "{body:#}"
    );
    assert_eq!(body["given_as"], "storage_path");
    assert_eq!(body["on_card"], true);
    rig.pair().await;
    eventually(T, "waiting for consent", || async {
        code(&rig, &a).await == "auto_upload_off"
    })
    .await;
    let (_, body) = why(&rig, &a).await;
    assert!(
        body["reason"]["message"]
            .as_str()
            .unwrap()
            .contains("consent"),
        "{body:#}"
    );

    // Consent: one goes up, the other is refused for its size and waits for the user.
    rig.consent(true).await;
    rig.expect_uploaded(&[&a], T).await;
    eventually(T, "the small file done", || async {
        code(&rig, &a).await == "done"
    })
    .await;
    let (_, body) = why(&rig, &a).await;
    assert_eq!(body["state"], "done");
    assert!(body["completed_at"].is_i64(), "{body:#}");
    assert_eq!(body["bytes_sent"], 1000);
    assert_eq!(body["attempts"], 0, "went up at the first try: {body:#}");
    eventually(T, "the big file failed", || async {
        code(&rig, &big).await == "failed"
    })
    .await;
    let (_, body) = why(&rig, &big).await;
    assert_eq!(body["state"], "failed");
    assert!(body["last_error"].is_string(), "{body:#}");
    assert_eq!(body["attempts"], 1, "{body:#}");

    // The server asks for a minute of quiet: a new file waits for its retry, at a time.
    rig.rx.inject(Fault::retry_after(503, 60).on("POST"));
    let c = rig.cam.photo("C.JPG", 700);
    rig.cam.age_media(&c, OLD);
    rig.daemon
        .api(
            "POST",
            "/v1/uploads",
            Some(serde_json::json!({ "paths": [c] })),
        )
        .await;
    eventually(T, "C waits for its retry", || async {
        code(&rig, &c).await == "waiting_for_retry"
    })
    .await;
    let (_, body) = why(&rig, &c).await;
    assert!(body["next_attempt_at"].is_i64(), "{body:#}");

    // Still being written: not settled. Deleted after its upload: says so.
    rig.cam.photo("D.JPG", 10);
    let (_, body) = why(&rig, "DCIM/100MEDIA/D.JPG").await;
    assert_eq!(
        (&body["state"], &body["reason"]["code"]),
        (&"not_queued".into(), &"not_settled".into()),
        "{body:#}"
    );
    std::fs::remove_file(rig.cam.media_path(&a)).unwrap();
    let (_, body) = why(&rig, &a).await;
    assert_eq!(body["reason"]["code"], "deleted_from_card", "{body:#}");
    assert_eq!(body["on_card"], false);

    // The CLI, with a path on the card as the user types it: it says which it was given.
    let abs = rig.cam.media_path(&big);
    let out = testkit::daemon::command(&bin())
        .arg("--socket")
        .arg(rig.daemon.socket())
        .arg("why")
        .arg(&abs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("{big} (given as an absolute path on the card)")),
        "{text}"
    );
    assert!(text.contains("state:      failed"), "{text}");
    assert!(text.contains("(failed)"), "{text}");
    // A path that is nowhere: exit 1, the daemon's words.
    let out = testkit::daemon::command(&bin())
        .arg("--socket")
        .arg(rig.daemon.socket())
        .args(["why", "DCIM/NOPE.JPG"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never queued"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn safe_to_format_turns_true_only_when_the_last_file_is_up() {
    let cam = FakeCamera::new();
    let video = cam.photo("VID_0100.MP4", BIG);
    let photo = cam.photo("IMG_0001.JPG", 5000);
    for rel in [&video, &photo] {
        cam.age_media(rel, OLD);
    }
    let rig = Rig::start_with(cam, slow_receiver().await).await;
    eventually(T, "both files found", || async {
        rig.status().await["card"]["to_go"]["files"] == 2
    })
    .await;
    let s = rig.status().await;
    assert_eq!(s["card"]["safe_to_format"], false, "{s:#}");
    assert_eq!(s["card"]["to_go"]["bytes"], BIG + 5000, "{s:#}");

    rig.go().await;
    eventually(T, "uploading", || async {
        rig.status().await["state"] == "uploading"
    })
    .await;
    let s = rig.status().await;
    assert_eq!(s["card"]["safe_to_format"], false, "in flight: {s:#}");
    assert!(s["card"]["to_go"]["files"].as_u64().unwrap() >= 1, "{s:#}");

    // Every status until the last upload is done says not yet; then it says yes.
    loop {
        let s = rig.status().await;
        let done = s["card"]["files_backed_up"] == 2;
        if s["card"]["safe_to_format"] == true {
            assert!(done, "safe before both were backed up: {s:#}");
            assert_eq!(s["card"]["to_go"]["files"], 0, "{s:#}");
            assert_eq!(s["card"]["to_go"]["bytes"], 0, "{s:#}");
            break;
        }
        assert!(
            !done || s["queue"]["pending"] != 0 || s["queue"]["uploading"] != 0,
            "both backed up, nothing to go, but not safe: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.expect_uploaded(&[&video, &photo], T).await;

    // A new photo: not safe until it is up too.
    rig.cam.photo("IMG_0002.JPG", 3000);
    eventually(T, "a new photo holds it", || async {
        rig.status().await["card"]["safe_to_format"] == false
    })
    .await;
    eventually(T, "safe again once it is up", || async {
        let s = rig.status().await;
        s["card"]["safe_to_format"] == true && s["card"]["files_backed_up"] == 3
    })
    .await;

    // The card out: nothing says it is safe.
    rig.cam.set_card_present(false);
    eventually(T, "not safe without the card", || async {
        let s = rig.status().await;
        s["card"]["safe_to_format"] == false && s["media_available"] == false
    })
    .await;
    // A file backed up is not "deleted from the card" while the card is only out.
    let (_, body) = why(&rig, &photo).await;
    assert_eq!(
        (&body["reason"]["code"], &body["on_card"]),
        (&"done".into(), &false.into()),
        "{body:#}"
    );
}
