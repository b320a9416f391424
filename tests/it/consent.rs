//! Issue 5, consent: the user's "stop" is obeyed within 2 s, a pause outlives a restart, and
//! unpairing leaves nothing of the account behind. What a user would check: the upload stops
//! at once, picks up where it was when allowed again, and after unpairing neither the token
//! nor the user ID can be found on the device.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use testkit::camera::FakeCamera;

use crate::common::{assert_resumes, assert_stops_within_2s, uploading_a_big_video};
use crate::common::{eventually, TOKEN};

#[tokio::test]
async fn withdrawing_consent_stops_an_upload_within_2s_and_it_resumes_when_given_again() {
    let (rig, rel) = uploading_a_big_video(FakeCamera::new()).await;
    let t0 = Instant::now();
    rig.consent(false).await;
    let stopped = assert_stops_within_2s(&rig, t0).await;
    let s = rig.status().await;
    assert_eq!(s["blocked_by"], json!(["auto_upload_off"]), "{s:#}");
    rig.consent(true).await;
    assert_resumes(&rig, &rel, &stopped).await;
}

#[tokio::test]
async fn pause_stops_within_2s_survives_a_restart_and_resume_continues_from_the_offset() {
    let (mut rig, rel) = uploading_a_big_video(FakeCamera::new()).await;
    let t0 = Instant::now();
    let (code, body) = rig.daemon.api("POST", "/v1/pause", None).await;
    assert_eq!(code, 200, "{body}");
    let stopped = assert_stops_within_2s(&rig, t0).await;
    assert_eq!(rig.status().await["state"], "paused");

    rig.daemon.restart().await;
    assert_eq!(
        rig.status().await["state"],
        "paused",
        "the pause outlived the restart"
    );
    let before = rig.rx.requests().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.rx.requests().len(),
        before,
        "the server was contacted while paused:{}",
        rig.rx.request_summary()
    );
    assert_eq!(rig.status().await["state"], "paused");

    let (code, body) = rig.daemon.api("POST", "/v1/resume", None).await;
    assert_eq!(code, 200, "{body}");
    assert_resumes(&rig, &rel, &stopped).await;
}

/// Every regular file under `dir`, recursively (the database, its -wal and -shm, anything).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files_under(&path));
        } else if ft.is_file() {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn unpairing_stops_within_2s_ends_the_server_upload_and_leaves_no_trace_of_the_account() {
    let cam = FakeCamera::new();
    // An older photo goes first and completes, so there is history to erase.
    let photo = cam.photo("IMG_0001.JPG", 200_000);
    cam.age_media(&photo, Duration::from_secs(3600));
    let (mut rig, video) = uploading_a_big_video(cam).await;
    let (_, history) = rig.daemon.api("GET", "/v1/history", None).await;
    assert_eq!(
        history["entries"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    let account_files = files_under(&rig.cam.state_dir());
    assert!(
        account_files
            .iter()
            .any(|f| contains(&std::fs::read(f).unwrap_or_default(), TOKEN.as_bytes())),
        "the token is somewhere under state.dir while paired (else this test proves nothing)"
    );

    let t0 = Instant::now();
    let (code, body) = rig.daemon.api("DELETE", "/v1/account", None).await;
    assert_eq!(code, 200, "{body}");
    assert_stops_within_2s(&rig, t0).await;
    assert_eq!(rig.status().await["state"], "unpaired");

    // The unfinished upload is ended on the server; the finished one is left alone.
    let deletes = rig.rx.requests_with_method("DELETE");
    assert_eq!(deletes.len(), 1, "{}", rig.rx.request_summary());
    assert_eq!(deletes[0].status, Some(204));
    assert_eq!(
        deletes[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let ups = rig.rx.uploads();
    let of = |rel: &str| {
        ups.iter()
            .find(|u| u.storage_path() == Some(rel))
            .unwrap_or_else(|| panic!("no upload of {rel}: {ups:#?}"))
    };
    assert!(of(&video).terminated, "{ups:#?}");
    assert!(of(&photo).complete && !of(&photo).terminated, "{ups:#?}");
    assert_eq!(deletes[0].path, format!("/files/{}", of(&video).id));

    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["paired"], false, "{account}");
    assert!(account["user_id"].is_null(), "{account}");
    let (_, history) = rig.daemon.api("GET", "/v1/history", None).await;
    assert_eq!(history["entries"], json!([]), "{history}");

    // No copy anywhere on the device's state: not in the credentials, not in a database page,
    // not in the WAL.
    let check = |when: &str| {
        for f in files_under(&rig.cam.state_dir()) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !contains(&bytes, TOKEN.as_bytes()),
                "{when}: the token is still in {}",
                f.display()
            );
            assert!(
                !contains(&bytes, b"user-42"),
                "{when}: the user ID is still in {}",
                f.display()
            );
        }
    };
    check("after unpairing");
    rig.daemon.restart().await;
    check("after a restart");
    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["paired"], false, "{account}");
    let before = rig.rx.requests().len();
    eventually(Duration::from_secs(2), "the daemon settles", || async {
        rig.status().await["state"] == "unpaired"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.rx.requests().len(), before, "requests while unpaired");
}
