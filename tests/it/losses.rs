//! Issue 17: ways a file was lost, corrupted or wrongly sent, each tried as a user (or an
//! unlucky camera) would, against the real daemon. The narrower cases (a card swapped for one
//! that reuses names, a file rewritten during its last chunk, non-UTF-8 names, a stale
//! endpoint's URL, the durable writes) have tests next to the code in `scan`, `store` and
//! `upload::transfer`.

use std::time::{Duration, SystemTime};

use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::daemon::Signal;
use testkit::tus::Receiver;

use crate::common::{eventually, server_offset, uploading_a_big_video, Rig, BIG, TOKEN};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_photo_shot_before_the_clock_was_set_goes_up_despite_full_rescans() {
    // A camera without an RTC battery boots at 1970; FAT floors times at 1980. Once NTP sets
    // the clock the photo is in the past; before, and here, its mtime is ahead of the clock.
    let cam = FakeCamera::new();
    cam.with("media", "rescan_secs", "1");
    cam.with("conditions", "hold_down_secs", "4");
    let rel = cam.photo("IMG_1970.JPG", 5000);
    let ahead = SystemTime::now() + Duration::from_secs(3 * 365 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(cam.media_path(&rel))
        .unwrap()
        .set_modified(ahead)
        .unwrap();
    let rig = Rig::start(cam).await;
    rig.go().await;
    rig.expect_uploaded(&[rel.as_str()], T).await;
    assert!(
        rig.paths("skipped").await.is_empty(),
        "never dropped as replaced"
    );
}

#[tokio::test]
async fn the_watcher_never_follows_a_symlink_out_of_the_card_or_round_a_loop() {
    let cam = FakeCamera::new();
    let rig = Rig::start(cam).await;
    rig.go().await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("SYSTEM.JPG"),
        b"a file that is not the card's",
    )
    .unwrap();
    let dcim = rig.cam.media_path("DCIM");
    std::fs::create_dir_all(dcim.join("100MEDIA")).unwrap();
    // While the daemon runs: a link out of the card, and a loop back into it.
    std::os::unix::fs::symlink(outside.path(), dcim.join("OUT")).unwrap();
    std::os::unix::fs::symlink(&dcim, dcim.join("100MEDIA/LOOP")).unwrap();
    // Files written after the links exist, inside the linked directory and on the card.
    std::fs::write(
        outside.path().join("LATER.JPG"),
        b"written through the link",
    )
    .unwrap();
    let real = "DCIM/100MEDIA/IMG_0001.JPG";
    rig.cam.write_sample(real, 4000);
    rig.expect_uploaded(&[real], T).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent: Vec<String> = rig
        .rx
        .uploads()
        .iter()
        .map(|u| u.metadata["storage_path"].clone())
        .collect();
    assert_eq!(sent, [real], "only the card's own file, once");
}

#[tokio::test]
async fn a_manual_request_does_not_survive_unpairing() {
    let cam = FakeCamera::new();
    // Consent off; the manual request waits for Wi-Fi.
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let rel = cam.photo("ASKED.JPG", 3000);
    let rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "queued", || async {
        rig.items(Some("pending")).await.len() == 1
    })
    .await;
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({"paths": [rel]})))
        .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = rig.daemon.api("DELETE", "/v1/account", None).await;
    assert_eq!(code, 200, "{body}");
    // Another user pairs (consent still off), and Wi-Fi comes back.
    let (code, body) = rig
        .daemon
        .api(
            "PUT",
            "/v1/account",
            Some(json!({"user_id": "the-next-user", "token": TOKEN})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    rig.cam.set_default_route("wlan0");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        rig.rx.requests().is_empty(),
        "the first user's request went up under the next account:{}",
        rig.rx.request_summary()
    );
}

#[tokio::test]
async fn a_zeroed_account_file_leaves_the_daemon_running_unpaired_and_pairable() {
    // A power cut between zero-filling and unlinking the file while unpairing.
    let cam = FakeCamera::new();
    let rel = cam.photo("A.JPG", 2000);
    std::fs::create_dir_all(cam.state_dir()).unwrap();
    std::fs::write(cam.state_dir().join("credentials.json"), vec![0u8; 96]).unwrap();
    let rig = Rig::start(cam).await;
    assert_eq!(rig.status().await["state"], "unpaired");
    assert!(
        rig.daemon.log().contains("account file"),
        "a log line says why"
    );
    rig.go().await;
    rig.expect_uploaded(&[rel.as_str()], T).await;
}

#[tokio::test]
async fn a_corrupt_database_neither_uploads_the_card_again_nor_turns_consent_on() {
    let cam = FakeCamera::new();
    // The maker ships consent on; this user switched it off after the first upload.
    cam.with("defaults", "auto_upload", "true");
    let a = cam.photo("A.JPG", 2000);
    let mut rig = Rig::start(cam).await;
    rig.pair().await;
    rig.expect_uploaded(&[a.as_str()], T).await;
    rig.consent(false).await;
    rig.daemon.stop().await;
    let db = rig.cam.state_dir().join("cambackup.db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::write(&db, vec![0x5a; len as usize]).unwrap();
    let b = rig.cam.photo("B.JPG", 3000);
    rig.daemon.restart().await;
    let (_, settings) = rig.daemon.api("GET", "/v1/settings", None).await;
    assert_eq!(settings["auto_upload"], false, "the user's 'off' is kept");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rig.rx.creations(), 1, "nothing went up without consent");
    rig.consent(true).await;
    rig.rx.wait_for_completed(2, T).await;
    rig.expect_uploaded(&[a.as_str(), b.as_str()], T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.rx.creations(),
        2,
        "A was not sent a second time:{}",
        rig.rx.request_summary()
    );
}

#[tokio::test]
async fn after_the_endpoint_moved_no_request_goes_to_the_old_host() {
    let (mut rig, rel) = uploading_a_big_video(FakeCamera::new()).await;
    rig.daemon.kill(Signal::Kill);
    rig.daemon.wait_exit(Duration::from_secs(5)).await;
    let old_requests = rig.rx.requests().len();
    assert!(server_offset(&rig.rx) < BIG);
    let new = Receiver::builder().token(TOKEN).start().await;
    rig.cam.write_config(&new.url());
    rig.daemon.restart().await;
    let old = std::mem::replace(&mut rig.rx, new);
    rig.expect_uploaded(&[rel.as_str()], T).await;
    assert_eq!(rig.rx.creations(), 1, "a new upload at the new endpoint");
    assert_eq!(
        old.requests().len(),
        old_requests,
        "the old host got requests (and the token) after the move:{}",
        old.request_summary()
    );
}

/// A small tmpfs mounted over `dir` for the test's life (root only); `None` where mounting is
/// not allowed.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_path_buf()))
    }

    /// Fills the file system: a file grown until the kernel says ENOSPC.
    fn fill(&self) -> std::path::PathBuf {
        self.fill_as("filler")
    }

    /// Fills it again after the daemon made room (it folds its WAL back when the disk is
    /// full), with a second file.
    fn fill_as(&self, name: &str) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join(name);
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn files_found_while_the_state_disk_is_full_are_queued_soon_after_it_frees_and_status_says_so(
) {
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let rig = Rig::start(cam).await;
    rig.go().await;
    let filler = fs.fill();
    let rels: Vec<String> = (0..400)
        .map(|i| {
            rig.cam.photo(
                &format!("FULL_{i:04}_with_a_long_name_to_fill_pages.JPG"),
                64,
            )
        })
        .collect();
    eventually(T, "attention says the state directory is full", || async {
        let s = rig.status().await;
        s["attention"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["code"] == "state_dir_full"))
    })
    .await;
    std::fs::remove_file(filler).unwrap();
    // Queued within seconds, not at the next full rescan (600 s), even on a slow daemon.
    let soon = testkit::daemon::scaled(T);
    eventually(soon, "all the files found while full queued", || async {
        rig.items(None).await.len() == rels.len()
    })
    .await;
    // Then sent: 400 uploads, each a few durable writes, which an emulated daemon takes
    // minutes over.
    rig.rx.wait_for_completed(rels.len(), soon).await;
    let s = rig.status().await;
    assert_eq!(s["attention"], json!([]), "{s:#}");
}

#[tokio::test]
async fn an_upload_cut_by_a_crash_resumes_though_the_state_disk_was_full_at_the_restart() {
    // Found by the soak (seed 16872186818318000927, docs/SOAK.md): the start-up recovery of an
    // item left `uploading` by the crash could not be written on the full disk and was never
    // tried again, so the file stayed `uploading` (and not on the server) until the next start.
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let (mut rig, rel) = uploading_a_big_video(cam).await;
    rig.daemon.kill(Signal::Kill);
    rig.daemon.wait_exit(Duration::from_secs(5)).await;
    let filler = fs.fill();
    rig.daemon.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_file(filler).unwrap();
    rig.expect_uploaded(&[rel.as_str()], T).await;
    assert_eq!(rig.rx.creations(), 1, "resumed, not created again");
}

#[tokio::test]
async fn an_unpairing_cut_short_by_a_power_cut_is_finished_at_the_next_start() {
    let cam = FakeCamera::new();
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let rel = cam.photo("ASKED.JPG", 3000);
    let mut rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "queued", || async {
        rig.items(Some("pending")).await.len() == 1
    })
    .await;
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({"paths": [rel]})))
        .await;
    assert_eq!(code, 202, "{body}");
    // The unpairing erased the account file, then the power went.
    rig.daemon.kill(Signal::Kill);
    rig.daemon.wait_exit(Duration::from_secs(5)).await;
    std::fs::remove_file(rig.cam.state_dir().join("credentials.json")).unwrap();
    rig.daemon.restart().await;
    assert_eq!(rig.status().await["state"], "unpaired");
    let (code, body) = rig
        .daemon
        .api(
            "PUT",
            "/v1/account",
            Some(json!({"user_id": "the-next-user", "token": TOKEN})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    rig.cam.set_default_route("wlan0");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        rig.rx.requests().is_empty(),
        "the first user's request went up under the next account:{}",
        rig.rx.request_summary()
    );
}

#[tokio::test]
async fn a_manual_request_for_a_link_is_refused_like_the_scan_ignores_it() {
    let cam = FakeCamera::new();
    let rel = cam.photo("REAL.JPG", 3000);
    std::os::unix::fs::symlink(
        cam.media_path(&rel),
        cam.media_path("DCIM/100MEDIA/LINK.JPG"),
    )
    .unwrap();
    let rig = Rig::start(cam).await;
    rig.pair().await;
    let (code, body) = rig
        .daemon
        .api(
            "POST",
            "/v1/uploads",
            Some(json!({"paths": ["DCIM/100MEDIA/LINK.JPG"]})),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{body}"
    );
}

/// Whether `attention` lists `code`.
fn attention_has(status: &serde_json::Value, code: &str) -> bool {
    status["attention"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["code"] == code))
}

/// Fills the state disk, has the daemon find it full (it then folds its WAL back, making a
/// little room: a change that withdraws nothing new is enough), and fills that room too.
async fn full_for_good(rig: &Rig, fs: &SmallFs) -> Vec<std::path::PathBuf> {
    let first = fs.fill();
    let (code, answer) = rig
        .daemon
        .api("PATCH", "/v1/settings", Some(json!({"free_space": "off"})))
        .await;
    assert_eq!(code, 200, "{answer}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    vec![first, fs.fill_as("filler-2")]
}

#[tokio::test]
async fn withdrawals_on_a_full_state_disk_take_effect_answer_200_and_hold_across_a_restart() {
    // Issue 22 item 1: each of these answered 500 (`choices.json: No space left on device`)
    // and changed nothing, while the upload went on.
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let (mut rig, rel) = uploading_a_big_video(cam).await;
    // Slowed down (a lower cap is itself a withdrawal) so that the upload is still under way
    // after the disk is filled, however fast this machine is: 10 MiB at 256 KiB/s is 40 s.
    let (code, answer) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"max_rate_kib_per_sec": 256})),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let fillers = full_for_good(&rig, &fs).await;
    let t0 = std::time::Instant::now();
    rig.consent(false).await;
    // Shown until it is saved, which the daemon tries again every 2 s (and may manage: each
    // failed write has it fold its WAL back, which makes a little room).
    let s = rig.status().await;
    assert!(attention_has(&s, "state_dir_full"), "{s:#}");
    let stopped = crate::common::assert_stops_within_2s(&rig, t0).await;
    for (method, path, body) in [
        ("POST", "/v1/pause", None),
        ("PATCH", "/v1/settings", Some(json!({"free_space": "off"}))),
        ("PATCH", "/v1/settings", Some(json!({"network": "wifi"}))),
        ("PUT", "/v1/network", Some(json!({"metered": true}))),
    ] {
        let (code, answer) = rig.daemon.api(method, path, body.clone()).await;
        assert_eq!(code, 200, "{method} {path} {body:?}: {answer}");
    }
    // A grant may be refused for lack of space, and says why. (Each failed write above had
    // the daemon fold its WAL back: what that freed is filled first.)
    let mut fillers = fillers;
    for (i, (method, path, body)) in [
        ("PATCH", "/v1/settings", Some(json!({"auto_upload": true}))),
        ("POST", "/v1/resume", None),
    ]
    .into_iter()
    .enumerate()
    {
        // Each refused write had the daemon fold its WAL back: what that freed is filled
        // before the next grant. (`PUT /v1/network {"metered": null}`, a grant too, is a write
        // into the database, which may still find room in pages it holds: not asserted here.)
        fillers.push(fs.fill_as(&format!("filler-grant-{i}")));
        let (code, answer) = rig.daemon.api(method, path, body.clone()).await;
        assert_eq!(code, 507, "{method} {path} {body:?}: {answer}");
        assert_eq!(answer["error"]["code"], "state_dir_full", "{answer}");
    }

    // The disk is still full at the restart: the withdrawals hold.
    rig.daemon.restart().await;
    let (_, settings) = rig.daemon.api("GET", "/v1/settings", None).await;
    assert_eq!(settings["auto_upload"], false, "{settings}");
    assert_eq!(settings["free_space"], "off", "{settings}");
    assert_eq!(rig.status().await["state"], "paused");
    let before = rig.rx.requests().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rig.rx.requests().len(),
        before,
        "the server was contacted:{}",
        rig.rx.request_summary()
    );

    // Room again: the choices are saved by themselves, and granting works.
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    eventually(T, "the choices saved and attention clear", || async {
        !attention_has(&rig.status().await, "state_dir_full")
    })
    .await;
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.cam.state_dir().join("choices.json")).unwrap())
            .unwrap();
    assert_eq!(saved["paused"], true, "{saved}");
    assert_eq!(saved["settings"]["auto_upload"], false, "{saved}");
    for (method, path, body) in [
        ("POST", "/v1/resume", None),
        ("PUT", "/v1/network", Some(json!({"metered": null}))),
        (
            "PATCH",
            "/v1/settings",
            Some(json!({"max_rate_kib_per_sec": 0})),
        ),
    ] {
        let (code, answer) = rig.daemon.api(method, path, body.clone()).await;
        assert_eq!(code, 200, "{method} {path} {body:?}: {answer}");
    }
    rig.consent(true).await;
    crate::common::assert_resumes(&rig, &rel, &stopped).await;
}

#[tokio::test]
async fn unpairing_on_a_full_state_disk_answers_200_and_the_rest_is_erased_once_there_is_room() {
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let done = cam.photo("DONE.JPG", 3000);
    let mut rig = Rig::start_with(cam, crate::common::slow_receiver().await).await;
    rig.go().await;
    rig.expect_uploaded(&[done.as_str()], T).await;
    rig.cam.photo("VID_0100.MP4", BIG);
    eventually(T, "2 MiB of the video on the server", || async {
        server_offset(&rig.rx) >= 2 << 20
    })
    .await;
    let fillers = full_for_good(&rig, &fs).await;
    let (code, answer) = rig.daemon.api("DELETE", "/v1/account", None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(rig.status().await["state"], "unpaired");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let patches = rig.rx.requests_with_method("PATCH").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.rx.requests_with_method("PATCH").len(),
        patches,
        "uploads went on after unpairing:{}",
        rig.rx.request_summary()
    );
    // A restart with the disk still full (what the daemon's folding of its WAL freed is
    // filled too): the daemon starts, unpaired.
    let mut fillers = fillers;
    fillers.push(fs.fill_as("filler-3"));
    rig.daemon.restart().await;
    let s = rig.status().await;
    assert_eq!(s["state"], "unpaired", "{s:#}");
    // (`state_dir_full` is not asserted here: the erasure may already have found room in the
    // pages SQLite holds, and then there is nothing left to say.)
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    eventually(T, "the old account's history erased", || async {
        let (code, h) = rig.daemon.api("GET", "/v1/history", None).await;
        code == 200 && h["entries"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    eventually(T, "attention clear", || async {
        !attention_has(&rig.status().await, "state_dir_full")
    })
    .await;
}

/// Issue 22, item 2: a power cut (or a full disk) in the middle of an append left the ledger's
/// last line without its newline; the user's cancel, appended next, was glued onto it and lost
/// with it, so after the database was lost the rebuilt queue resumed the cancelled upload.
#[tokio::test]
async fn a_cancel_after_a_torn_ledger_line_holds_when_the_database_is_lost() {
    let (mut rig, rel) = uploading_a_big_video(FakeCamera::new()).await;
    let ledger = rig.cam.state_dir().join("ledger.jsonl");
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&ledger)
            .unwrap();
        f.write_all(br#"{"p":"DCIM/100MEDIA/IMG_9999.JPG","s":4096,"m":17"#)
            .unwrap();
    }
    let id = rig.items(Some("uploading")).await[0]["id"]
        .as_i64()
        .unwrap();
    let (code, body) = rig
        .daemon
        .api("DELETE", &format!("/v1/queue/{id}"), None)
        .await;
    assert!((200..300).contains(&code), "{code} {body}");
    eventually(T, "cancelled", || async {
        rig.paths("cancelled").await == [rel.clone()]
    })
    .await;
    rig.daemon.stop().await;
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(rig.cam.state_dir().join(format!("cambackup.db{ext}")));
    }
    let (requests, creations) = (rig.rx.requests().len(), rig.rx.creations());
    rig.daemon.restart().await;
    eventually(T, "still cancelled after the rebuild", || async {
        rig.paths("cancelled").await == [rel.clone()]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        (rig.rx.requests().len(), rig.rx.creations()),
        (requests, creations),
        "the cancelled file went to the server again:{}",
        rig.rx.request_summary()
    );
    assert!(rig.rx.completed(&rel).is_none());
}

/// Pairing is a grant: on a full disk it is refused with 507 `state_dir_full` (it answered
/// 500), and the account paired before stays paired, across a restart too.
#[tokio::test]
async fn pairing_on_a_full_state_disk_answers_507_and_keeps_the_earlier_account() {
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let mut rig = Rig::start(cam).await;
    rig.pair().await;
    let mut fillers = full_for_good(&rig, &fs).await;
    fillers.push(fs.fill_as("filler-3"));
    // The server takes any token here: the refusal must be the disk's.
    rig.rx.set_token(None);
    let (code, answer) = rig
        .daemon
        .api(
            "PUT",
            "/v1/account",
            Some(json!({"user_id": "another-user", "token": "another-token"})),
        )
        .await;
    assert_eq!(code, 507, "{answer}");
    assert_eq!(answer["error"]["code"], "state_dir_full", "{answer}");
    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["user_id"], "user-42", "{account}");
    rig.daemon.restart().await;
    let (_, account) = rig.daemon.api("GET", "/v1/account", None).await;
    assert_eq!(account["user_id"], "user-42", "{account}");
    assert_ne!(rig.status().await["state"], "unpaired");
    drop(fillers);
}

/// The app's "this Wi-Fi is metered" narrows what may be sent: on a full state disk it answered
/// 200 but lived only in the database, so after a restart on the still-full disk a metered
/// hotspot was taken for unmetered again.
#[tokio::test]
async fn the_wifi_the_app_calls_metered_stays_metered_across_a_restart_on_a_full_state_disk() {
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let mut rig = Rig::start(cam).await;
    rig.pair().await;
    let mut fillers = full_for_good(&rig, &fs).await;
    let (code, answer) = rig
        .daemon
        .api("PUT", "/v1/network", Some(json!({"metered": true})))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(rig.status().await["uplink"]["metered_override"], true);
    fillers.push(fs.fill_as("filler-3"));
    rig.daemon.restart().await;
    let s = rig.status().await;
    assert_eq!(s["uplink"]["metered_override"], true, "{s:#}");
    // Room again: kept with the other choices, and "you decide" may be said again.
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    eventually(T, "the choices saved", || async {
        !attention_has(&rig.status().await, "state_dir_full")
    })
    .await;
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.cam.state_dir().join("choices.json")).unwrap())
            .unwrap();
    assert_eq!(saved["metered"], true, "{saved}");
    let (code, answer) = rig
        .daemon
        .api("PUT", "/v1/network", Some(json!({"metered": null})))
        .await;
    assert_eq!(code, 200, "{answer}");
    rig.daemon.restart().await;
    assert_eq!(
        rig.status().await["uplink"]["metered_override"],
        serde_json::Value::Null
    );
}

/// The same per Wi-Fi network (issue 25): "metered" said on a named network holds on a full
/// disk and across a restart there; "not metered" cannot be saved and is refused with 507,
/// changing nothing.
#[tokio::test]
async fn the_wifi_network_the_app_calls_metered_stays_metered_on_a_full_state_disk() {
    use testkit::wpa::{FakeWpa, Network};
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let wpa = FakeWpa::start(
        &cam.wpa_ctrl_dir(),
        "wlan0",
        Some(Network::named("Hotspot", "02:00:00:00:0c:01")),
    );
    let mut rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "the status names the network", || async {
        rig.status().await["uplink"]["network_name"]["ssid"] == "Hotspot"
    })
    .await;
    let mut fillers = full_for_good(&rig, &fs).await;
    let (code, answer) = rig
        .daemon
        .api("PUT", "/v1/network", Some(json!({"metered": true})))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["network_name"]["ssid"], "Hotspot", "{answer}");
    let (code, answer) = rig
        .daemon
        .api("PUT", "/v1/network", Some(json!({"metered": false})))
        .await;
    assert_eq!(code, 507, "{answer}");
    assert_eq!(answer["error"]["code"], "state_dir_full", "{answer}");
    // The link's verdict comes from the next conditions read, which the PUT asks for: under
    // load it may not have run yet.
    eventually(T, "metered by the app's answer", || async {
        let s = rig.status().await;
        s["uplink"]["metered_override"] == true && s["uplink"]["metered_because"] == "app"
    })
    .await;
    fillers.push(fs.fill_as("filler-3"));
    rig.daemon.restart().await;
    eventually(
        T,
        "still metered after the restart on the full disk",
        || async {
            let s = rig.status().await;
            s["uplink"]["network_name"]["ssid"] == "Hotspot"
                && s["uplink"]["metered_override"] == true
                && s["blocked_by"]
                    .as_array()
                    .is_some_and(|b| b.contains(&json!("metered_network")))
        },
    )
    .await;
    // What proves the network's own answer held, not the fallback of a lost file (which
    // takes every network for metered, and pauses): the file keeps it and no answer for
    // every network, and another network is not held.
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rig.cam.state_dir().join("choices.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved["metered_networks"],
        json!([{"ssid": "Hotspot", "metered": true}]),
        "{saved}"
    );
    assert_eq!(
        saved.get("metered"),
        Some(&serde_json::Value::Null),
        "{saved}"
    );
    assert_eq!(saved["paused"], false, "{saved}");
    wpa.set(Some(Network::named("Elsewhere", "02:00:00:00:0d:01")));
    rig.cam.set_interface("wlan0", true, true);
    eventually(T, "another network is not held", || async {
        let s = rig.status().await;
        s["uplink"]["network_name"]["ssid"] == "Elsewhere"
            && s["uplink"]["metered_override"] == serde_json::Value::Null
            && s["uplink"]["metered"] == false
            && s["blocked_by"]
                .as_array()
                .is_some_and(|b| !b.contains(&json!("metered_network")))
    })
    .await;
    drop(fillers);
    drop(wpa);
}

/// A change that both withdraws and widens, on a full disk: the widening part cannot be saved
/// and is refused (507), but the withdrawal in it must take effect: consent went on before.
#[tokio::test]
async fn a_change_that_withdraws_and_widens_on_a_full_disk_applies_the_withdrawal_and_says_507() {
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    let (mut rig, _rel) = uploading_a_big_video(cam).await;
    // Slowed down so that the upload is still under way once the disk is full.
    let (code, answer) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"max_rate_kib_per_sec": 256})),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let mut fillers = full_for_good(&rig, &fs).await;
    fillers.push(fs.fill_as("filler-3"));
    let t0 = std::time::Instant::now();
    let (code, answer) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"auto_upload": false, "network": "any"})),
        )
        .await;
    assert_eq!(code, 507, "{answer}");
    assert_eq!(answer["error"]["code"], "state_dir_full", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("Not applied: network"), "{message}");
    crate::common::assert_stops_within_2s(&rig, t0).await;
    let (_, settings) = rig.daemon.api("GET", "/v1/settings", None).await;
    assert_eq!(settings["auto_upload"], false, "{settings}");
    assert_eq!(
        settings["network"], "wifi",
        "the grant was applied: {settings}"
    );
    // The disk still full at the restart: the withdrawal holds.
    rig.daemon.restart().await;
    let (_, settings) = rig.daemon.api("GET", "/v1/settings", None).await;
    assert_eq!(settings["auto_upload"], false, "{settings}");
    assert_eq!(settings["network"], "wifi", "{settings}");
    drop(fillers);
}

/// The data plan's count on a full state disk: the bytes sent over cellular while the count
/// could not be written were held in memory only, and the first write once there was room put
/// the stored count (without them) in force: the day's budget was fresh again for bytes sent.
#[tokio::test]
async fn bytes_sent_over_cellular_while_the_state_disk_was_full_still_count_once_it_has_room() {
    const MIB: u64 = 1 << 20;
    let received = |rx: &Receiver| -> u64 {
        rx.requests_with_method("PATCH")
            .iter()
            .map(|r| r.body_len)
            .sum()
    };
    let cam = FakeCamera::new();
    let Some(fs) = SmallFs::mount(&cam.state_dir(), "2m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?); this test needs one");
        return;
    };
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let video = cam.photo("VID_0100.MP4", BIG);
    cam.age_media(&video, Duration::from_secs(600));
    let rx = Receiver::builder().token(TOKEN).start().await;
    let mut rig = Rig::start_with(cam, rx).await;
    rig.pair().await;
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(
                json!({"network": "any", "cellular_daily_mib": 3, "max_rate_kib_per_sec": 512,
                        "auto_upload": true}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    eventually(T, "1 MiB over cellular", || async {
        received(&rig.rx) >= MIB
    })
    .await;
    let mut fillers = full_for_good(&rig, &fs).await;
    fillers.push(fs.fill_as("filler-3"));
    eventually(T, "the budget used", || async {
        rig.status().await["blocked_by"] == json!(["data_budget_used"])
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = received(&rig.rx);
    assert!(
        sent <= 3 * MIB + 128 * 1024,
        "{sent} bytes over cellular under a budget of 3 MiB"
    );
    for f in fillers {
        std::fs::remove_file(f).unwrap();
    }
    // Room again: the count is written, with the bytes sent meanwhile; no fresh budget.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = rig.status().await;
    assert_eq!(s["blocked_by"], json!(["data_budget_used"]), "{s:#}");
    assert_eq!(
        received(&rig.rx),
        sent,
        "bytes over cellular past the budget"
    );
    rig.daemon.restart().await;
    let s = rig.status().await;
    let counted = s["cellular_bytes_today"].as_u64().unwrap();
    assert!(
        counted >= sent.min(3 * MIB),
        "{counted} counted of {sent} sent: {s:#}"
    );
}
