//! Issue 2: from the card to the queue. What a user would check: which files went up, once
//! each, with their final bytes; nothing lost when the card or the daemon goes away.

use std::time::Duration;

use serde_json::json;
use testkit::camera::FakeCamera;

use crate::common::{db, eventually, Rig};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn uploads_exactly_the_media_files_with_their_exact_names() {
    let cam = FakeCamera::new();
    let wanted = [
        "DCIM/100MEDIA/IMG 0001, copy.JPG",
        "DCIM/100MEDIA/Ünïcødé 照片.heic",
        "DCIM/100MEDIA/empty.jpg",
        "DCIM/101MEDIA/deep/er/VID_0002.MP4",
    ];
    for (i, rel) in wanted.iter().enumerate() {
        cam.write_sample(
            rel,
            if rel.ends_with("empty.jpg") {
                0
            } else {
                1000 + i as u64 * 777
            },
        );
    }
    for rel in [
        "DCIM/100MEDIA/VID_0002.THM",
        "DCIM/100MEDIA/VID_0002.LRV",
        "DCIM/100MEDIA/.hidden.jpg",
        "DCIM/.trash/old.jpg",
        "DCIM/100MEDIA/notes.txt",
    ] {
        cam.write_media(rel, b"not for upload");
    }
    std::os::unix::fs::symlink("/etc/passwd", cam.media_path("DCIM/100MEDIA/passwd.jpg")).unwrap();
    let rig = Rig::start(cam).await;
    rig.go().await;
    rig.expect_uploaded(&wanted, T).await;

    // A directory created while the daemon runs, with files in it at once.
    let late = [
        "DCIM/102MEDIA/new dir/IMG_0100.JPG",
        "DCIM/102MEDIA/new dir/IMG_0101.JPG",
    ];
    for rel in late {
        rig.cam.write_sample(rel, 4096);
    }
    rig.rx
        .wait_for_completed(wanted.len() + late.len(), T)
        .await;
    rig.expect_uploaded(&late, T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.rx.completed_uploads().len(),
        wanted.len() + late.len(),
        "only media went up, once each"
    );
    assert_eq!(rig.rx.creations(), wanted.len() + late.len());
    let mut sent: Vec<String> = rig
        .rx
        .completed_uploads()
        .iter()
        .map(|u| u.metadata["storage_path"].clone())
        .collect();
    sent.sort();
    let mut all: Vec<String> = wanted
        .iter()
        .chain(late.iter())
        .map(|s| s.to_string())
        .collect();
    all.sort();
    assert_eq!(sent, all);
}

#[tokio::test]
async fn a_file_written_slowly_is_queued_once_after_it_settles_with_its_final_size() {
    let cam = FakeCamera::new();
    let rig = Rig::start(cam).await;
    let rel = "DCIM/100MEDIA/VID_0001.MP4";
    // 6 appends, 700 ms apart: longer than settle_secs (1 s) in total, never quiet for 1 s.
    let writer = rig
        .cam
        .write_media_slowly(rel, 600_000, 6, Duration::from_millis(700));
    let watch = async {
        let mut seen_early = false;
        for _ in 0..40 {
            if !rig.items(None).await.is_empty() {
                seen_early = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen_early
    };
    let (_, early) = tokio::join!(writer, watch);
    assert!(!early, "queued while still being written");
    eventually(T, "the video to be queued", || async {
        !rig.items(None).await.is_empty()
    })
    .await;
    let items = rig.items(None).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["size"], 600_000);
    rig.go().await;
    rig.expect_uploaded(&[rel], T).await;
    assert_eq!(rig.rx.creations(), 1);
}

#[tokio::test]
async fn a_replaced_file_is_a_new_version_and_a_deleted_one_leaves_the_queue_with_a_reason() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 5000);
    let b = cam.photo("B.JPG", 5000);
    let rig = Rig::start(cam).await;
    eventually(T, "two queued", || async {
        rig.items(Some("pending")).await.len() == 2
    })
    .await;

    // Deleted before upload: dropped, with the reason.
    std::fs::remove_file(rig.cam.media_path(&b)).unwrap();
    eventually(T, "B dropped", || async {
        rig.paths("skipped").await == [b.clone()]
    })
    .await;
    let skipped = rig.items(Some("skipped")).await;
    assert_eq!(skipped[0]["last_error"], "file deleted before upload");

    // Upload A, then replace it: the new version goes up too.
    rig.go().await;
    rig.expect_uploaded(&[a.as_str()], T).await;
    // Replaced once the daemon has recorded A done: a file rewritten between the server's
    // last byte and the daemon's look at the file after it is rightly not called done (the
    // last byte may be the new version's), and its upload is ended on the server.
    eventually(T, "A done", || async {
        rig.paths("done").await == [a.clone()]
    })
    .await;
    rig.cam.write_sample(&a, 9000);
    rig.cam.write_media(&a, &vec![7u8; 9000]);
    rig.rx.wait_for_completed(2, T).await;
    assert_eq!(
        rig.rx.completed(&a).unwrap(),
        vec![7u8; 9000],
        "the server's newest copy is the new version"
    );
    assert_eq!(rig.rx.creations(), 2, "one creation per version");
    assert!(rig
        .rx
        .completed_uploads()
        .iter()
        .all(|u| u.metadata["storage_path"] == a));
}

#[tokio::test]
async fn the_card_removed_and_restored_loses_nothing_and_rescans() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 3000);
    let b = cam.photo("B.JPG", 3000);
    let rig = Rig::start(cam).await;
    eventually(T, "two queued", || async {
        rig.items(Some("pending")).await.len() == 2
    })
    .await;

    rig.cam.set_card_present(false);
    // Not paired yet, so the state is `unpaired`; the card's absence shows in `media_available`.
    eventually(T, "media unavailable", || async {
        rig.status().await["media_available"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rig.paths("pending").await,
        [a.clone(), b.clone()],
        "no false deletion while the card is out"
    );
    assert!(rig.items(Some("skipped")).await.is_empty());

    rig.cam.set_card_present(true);
    let c = rig.cam.photo("C.JPG", 3000);
    eventually(T, "C found by the rescan on return", || async {
        rig.paths("pending").await.len() == 3
    })
    .await;
    rig.go().await;
    rig.expect_uploaded(&[a.as_str(), b.as_str(), c.as_str()], T)
        .await;
}

#[tokio::test]
async fn a_restart_finds_files_added_while_down_and_does_not_requeue_done_ones() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 4000);
    let mut rig = Rig::start(cam).await;
    rig.go().await;
    rig.expect_uploaded(&[a.as_str()], T).await;
    eventually(T, "A done", || async {
        rig.paths("done").await == [a.clone()]
    })
    .await;

    rig.daemon.stop().await;
    let b = rig.cam.photo("B.JPG", 4000);
    rig.cam.age_media(&b, Duration::from_secs(60));
    rig.daemon.restart().await;
    rig.expect_uploaded(&[a.as_str(), b.as_str()], T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rig.rx.creations(), 2, "A was not sent again");
    let conn = db(&rig.cam.state_dir());
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM items WHERE storage_path = ?1",
            [&a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "one row for A in the database");
}

#[tokio::test]
async fn a_corrupt_database_is_moved_aside_and_rebuilt_by_a_rescan() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 2000);
    std::fs::create_dir_all(cam.state_dir()).unwrap();
    std::fs::write(cam.state_dir().join("cambackup.db"), vec![0x5a; 64 * 1024]).unwrap();
    let rig = Rig::start(cam).await;
    eventually(T, "A queued in the new database", || async {
        rig.paths("pending").await == [a.clone()]
    })
    .await;
    let aside: Vec<_> = std::fs::read_dir(rig.cam.state_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cambackup.db.corrupt-")
        })
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the corrupt file is kept aside for inspection"
    );
    assert!(
        rig.daemon.log().contains("corrupt"),
        "a clear log line says so"
    );
    let (code, _) = rig.daemon.api("GET", "/v1/health", None).await;
    assert_eq!(code, 200);
    let _ = json!(null);
}

#[tokio::test]
async fn with_several_uploads_at_once_each_file_goes_up_exactly_once() {
    let cam = FakeCamera::new();
    cam.with("cloud", "concurrency", "3");
    let files: Vec<String> = (1..=7)
        .map(|i| cam.photo(&format!("IMG_{i:04}.JPG"), 300_000 + i * 1000))
        .collect();
    let rig = Rig::start(cam).await;
    rig.go().await;
    let rels: Vec<&str> = files.iter().map(String::as_str).collect();
    rig.expect_uploaded(&rels, T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.rx.creations(),
        files.len(),
        "{}",
        rig.rx.request_summary()
    );
    assert_eq!(rig.rx.completed_uploads().len(), files.len());
    eventually(T, "all done", || async {
        rig.paths("done").await.len() == files.len()
    })
    .await;
}

/// The watch reaches every directory of the card: one that was there at the start (deep down),
/// one made while the daemon runs, one moved in from elsewhere and one renamed on the card. A
/// file written into each afterwards is queued from its events alone (`rescan_secs` is 600,
/// and the writes come after the walks of new directories are over).
#[tokio::test]
async fn a_file_written_into_any_directory_of_the_card_is_queued_without_a_rescan() {
    let cam = FakeCamera::new();
    let first = "DCIM/100MEDIA/sub/deeper/FIRST.JPG";
    cam.write_sample(first, 1000);
    cam.age_media(first, Duration::from_secs(60));
    // A tree outside the card, on the same file system, to move in later.
    let staging = cam.root().join("staging");
    std::fs::create_dir_all(staging.join("200MEDIA/a/b")).unwrap();
    let rig = Rig::start(cam).await;
    eventually(T, "the first scan", || async {
        rig.paths("pending").await == [first]
    })
    .await;

    let deep = "DCIM/100MEDIA/sub/deeper/DEEP.JPG";
    rig.cam.write_sample(deep, 1000);
    eventually(T, "a file deep in the card at the start", || async {
        rig.paths("pending").await.contains(&deep.to_string())
    })
    .await;
    std::fs::create_dir_all(rig.cam.media_path("DCIM/300MEDIA/x/y")).unwrap();
    std::fs::rename(
        staging.join("200MEDIA"),
        rig.cam.media_path("DCIM/200MEDIA"),
    )
    .unwrap();
    std::fs::rename(
        rig.cam.media_path("DCIM/100MEDIA/sub"),
        rig.cam.media_path("DCIM/100MEDIA/renamed"),
    )
    .unwrap();
    // Past the second walk of a new directory (REWALK_NEW_DIR, 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = [
        "DCIM/100MEDIA/renamed/deeper/RENAMED.JPG",
        "DCIM/200MEDIA/a/b/MOVED_IN.JPG",
        "DCIM/300MEDIA/x/y/MADE.JPG",
    ];
    for rel in later {
        rig.cam.write_sample(rel, 1000);
    }
    eventually(T, "the files written into the new directories", || async {
        let queued = rig.paths("pending").await;
        later.iter().all(|rel| queued.contains(&rel.to_string()))
    })
    .await;
}

/// The codes of `status.attention`.
fn attention(s: &serde_json::Value) -> Vec<String> {
    s["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap().to_string())
        .collect()
}

/// What a user sees of a camera without its card: the state and the one thing to fix.
fn assert_no_card(s: &serde_json::Value) {
    assert_eq!(s["state"], "media_unavailable", "{s:#}");
    assert_eq!(s["media_available"], false, "{s:#}");
    assert_eq!(attention(s), ["media_unavailable"], "{s:#}");
}

/// A manual upload while the card is not there: refused, naming why, and nothing queued.
async fn assert_manual_upload_refused(rig: &Rig, rel: &str) {
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({ "paths": [rel] })))
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("media_unavailable")),
        "{body}"
    );
    assert!(rig.items(None).await.is_empty());
}

/// Longer than the watcher's look at the card (every 5 s), so a test sees what it concluded.
const A_LOOK: Duration = Duration::from_secs(6);

/// Issue 22, item 8: a camera booted without its card said "idle: nothing to upload" for as
/// long as it ran without one.
#[tokio::test]
async fn a_camera_started_without_its_card_says_so_from_the_start_and_finds_it_later() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 3000);
    cam.set_card_present(false);
    let rig = Rig::start(cam).await;
    rig.go().await;
    assert_no_card(&rig.status().await);
    tokio::time::sleep(A_LOOK).await;
    assert_no_card(&rig.status().await);
    assert_manual_upload_refused(&rig, &a).await;

    rig.cam.set_card_present(true);
    rig.expect_uploaded(&[a.as_str()], T).await;
    let s = rig.status().await;
    assert_eq!(s["media_available"], true, "{s:#}");
    assert!(attention(&s).is_empty(), "{s:#}");
}

/// A tmpfs mounted over a directory for the test's life, as the camera mounts its card (root
/// only).
struct Mounted(std::path::PathBuf);

impl Mounted {
    fn tmpfs(dir: &std::path::Path) -> Option<Mounted> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mounted(dir.to_path_buf()))
    }

    fn unmount(self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "umount {}", self.0.display());
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 22, item 8, with `media.mount_required`: the mount point with no card behind it, even
/// with files written into it, is no card; a card mounted on it is seen and scanned, and its
/// files are not "deleted" when it is unmounted.
#[tokio::test]
async fn with_mount_required_an_empty_mount_point_is_no_card_until_one_is_mounted() {
    let cam = FakeCamera::new();
    cam.with("media", "mount_required", "true");
    // On the camera's own flash, under the mount point: not a card's file.
    let stray = cam.photo("STRAY.JPG", 2000);
    let rig = Rig::start(cam).await;
    rig.go().await;
    assert_no_card(&rig.status().await);
    tokio::time::sleep(A_LOOK).await;
    assert_no_card(&rig.status().await);
    assert!(
        rig.items(None).await.is_empty(),
        "nothing queued from the mount point"
    );
    assert_manual_upload_refused(&rig, &stray).await;

    let Some(card) = Mounted::tmpfs(&rig.cam.media_root()) else {
        eprintln!("SKIPPED the mounted half: cannot mount a tmpfs for the card (needs root)");
        return;
    };
    let b = rig.cam.photo("B.JPG", 3000);
    let c = rig.cam.photo("C.JPG", 3000);
    rig.expect_uploaded(&[b.as_str(), c.as_str()], T).await;
    let s = rig.status().await;
    assert_eq!(s["media_available"], true, "{s:#}");
    assert!(attention(&s).is_empty(), "{s:#}");
    let sent: Vec<String> = rig
        .rx
        .completed_uploads()
        .iter()
        .map(|u| u.metadata["storage_path"].clone())
        .collect();
    assert!(!sent.contains(&stray), "{sent:?}");

    // A file the card holds, queued but not sent: the card unmounted does not make it deleted.
    rig.consent(false).await;
    let d = rig.cam.photo("D.JPG", 3000);
    eventually(T, "D queued", || async {
        rig.paths("pending").await == [d.clone()]
    })
    .await;
    card.unmount();
    eventually(T, "the card missing again", || async {
        rig.status().await["media_available"] == false
    })
    .await;
    tokio::time::sleep(A_LOOK).await;
    assert_no_card(&rig.status().await);
    assert_eq!(rig.paths("pending").await, [d], "no false deletion");
}

/// Issue 22, item 9: the card pulled also raised `unreadable_files` ("1 entries on the card
/// could not be read"): its absence is the one thing to tell the user.
#[tokio::test]
async fn pulling_the_card_raises_media_unavailable_alone() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 3000);
    let rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "A queued", || async {
        rig.paths("pending").await == [a.clone()]
    })
    .await;

    rig.cam.set_card_present(false);
    eventually(T, "media unavailable", || async {
        rig.status().await["media_available"] == false
    })
    .await;
    // Long enough for the scan the removal's events ask for to finish and be reported.
    tokio::time::sleep(A_LOOK).await;
    assert_no_card(&rig.status().await);

    rig.cam.set_card_present(true);
    eventually(T, "the card back, nothing to fix", || async {
        let s = rig.status().await;
        s["media_available"] == true && attention(&s).is_empty()
    })
    .await;
}
