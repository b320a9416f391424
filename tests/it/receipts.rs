//! Issue 28, receipts: under `free_space_verify = "receipt"` a file is freed only when the
//! server's receipt (`Repr-Digest` on a `HEAD` that asked with `Want-Repr-Digest`, computed
//! from what it stored) equals the camera's SHA-256 of the file as sent, and the file reads
//! back the same. On the tmpfs card of `space.rs` (six 512 KiB photos; the two oldest go), the
//! real daemon, and testkit's receiver as tusd or @tus/s3-store would be (no checksum
//! extension), giving receipts from its stored bytes unless told not to.
//!
//! What a user would check: which files are still on the card, what `GET /v1/space`, the
//! history and `attention` say; and what the server was asked (the four metadata fields, the
//! one new header on the confirming `HEAD` only).
//!
//! Mounting needs root; elsewhere each test prints why it is skipped and passes.

use std::time::Duration;

use serde_json::Value;
use testkit::daemon::Signal;
use testkit::tus::{Fault, Receiver};

use crate::common::{eventually, Rig};
use crate::space::{
    camera, free_and_wait_for_a_pass, freed_in_history, history, hold_uploads, old, on_card,
    receiver, space, the_edit_was_kept_then_sent, uploaded, wait_for_a_pass_after, KIB, T,
};

/// testkit's receiver as the common servers are: no checksum extension (so `checksum` could
/// never free anything), receipts from the stored bytes.
fn tusd_like() -> testkit::tus::ReceiverBuilder {
    Receiver::builder().without_checksum()
}

async fn attention_codes(rig: &Rig) -> Vec<String> {
    let s = rig.status().await;
    s["attention"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["code"].as_str().unwrap().to_string())
        .collect()
}

/// `freed_on` of the history entry of `rel`'s latest upload.
async fn freed_on(rig: &Rig, rel: &str) -> Value {
    history(rig)
        .await
        .into_iter()
        .find(|e| e["storage_path"] == rel)
        .map(|e| e["freed_on"].clone())
        .unwrap_or(Value::Null)
}

/// The server's completed uploads of `rel`.
fn uploads_of(rx: &Receiver, rel: &str) -> Vec<testkit::tus::UploadInfo> {
    rx.completed_uploads()
        .into_iter()
        .filter(|u| u.storage_path() == Some(rel))
        .collect()
}

/// The one thing receipts add to the wire: `Want-Repr-Digest: sha-256=10` on the `HEAD` of a
/// completed upload. Every creation still carries exactly the four metadata fields, and no
/// other request carries the header.
fn wire_is_unchanged_but_for_the_receipts_head(rx: &Receiver) {
    let mut asked = 0;
    for r in rx.requests() {
        let want = r.header("want-repr-digest");
        match r.method.as_str() {
            "POST" => {
                let md = r.header("upload-metadata").expect("creation metadata");
                let mut keys: Vec<&str> = md
                    .split(',')
                    .map(|kv| kv.trim().split(' ').next().unwrap())
                    .collect();
                keys.sort();
                assert_eq!(
                    keys,
                    ["device_type", "serial_number", "storage_path", "user_id"],
                    "{md}"
                );
                assert_eq!(want, None);
            }
            "HEAD" if want.is_some() => {
                assert_eq!(want, Some("sha-256=10"));
                asked += 1;
            }
            _ => assert_eq!(want, None, "{} {}", r.method, r.path),
        }
        assert!(r.header("repr-digest").is_none() && r.header("content-digest").is_none());
    }
    assert!(
        asked > 0,
        "no HEAD asked for a receipt:\n{}",
        rx.request_summary()
    );
}

#[tokio::test]
async fn a_file_is_freed_on_a_matching_receipt_and_the_history_says_so() {
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    let rx = receiver(tusd_like()).await;
    let rig = uploaded(cam, rx, &rels).await;
    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["freed_files"], 2, "{pass:#}");
    assert_eq!(
        on_card(&rig.cam, &rels),
        [false, false, true, true, true, true]
    );
    assert_eq!(freed_in_history(&rig).await, rels[..2].to_vec());
    for rel in &rels[..2] {
        assert_eq!(freed_on(&rig, rel).await, "receipt");
    }
    assert_eq!(freed_on(&rig, &rels[2]).await, Value::Null);
    wire_is_unchanged_but_for_the_receipts_head(&rig.rx);
    assert!(!attention_codes(&rig)
        .await
        .contains(&"server_digest_mismatch".to_string()));
}

#[tokio::test]
async fn without_a_receipt_nothing_is_freed_and_space_says_no_receipt() {
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    let rx = receiver(tusd_like().without_receipts()).await;
    let rig = uploaded(cam, rx, &rels).await;
    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["freed_files"], 0, "{pass:#}");
    assert_eq!(pass["kept"]["no_receipt"], 6, "{pass:#}");
    assert_eq!(on_card(&rig.cam, &rels), [true; 6]);
    // `GET /v1/space` names the reason: its last pass asked the server for each file.
    let v = space(&rig).await;
    assert_eq!(v["last_pass"]["kept"]["no_receipt"], 6, "{v:#}");
    assert!(attention_codes(&rig)
        .await
        .contains(&"free_space_unverified".to_string()));
    wire_is_unchanged_but_for_the_receipts_head(&rig.rx);
}

#[tokio::test]
async fn a_stored_object_that_differs_is_kept_sent_again_once_and_flagged_until_a_receipt_matches()
{
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    let rx = receiver(tusd_like()).await;
    let rig = uploaded(cam, rx, &rels).await;
    // The server's store loses bytes after it acknowledged them: one byte changed in the
    // oldest photo's object, the next one's object truncated (its upload still says complete).
    let first = uploads_of(&rig.rx, &rels[0]);
    let second = uploads_of(&rig.rx, &rels[1]);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options()
            .write(true)
            .open(rig.rx.data_path(&first[0].id))
            .unwrap();
        f.seek(std::io::SeekFrom::Start(100 * KIB)).unwrap();
        f.write_all(&[0x5a]).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(rig.rx.data_path(&second[0].id))
            .unwrap();
        f.set_len(256 * KIB).unwrap();
    }
    assert!(!rig.rx.file_matches(&rels[0], &rig.cam.media_path(&rels[0])));

    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["kept"]["server_digest_mismatch"], 2, "{pass:#}");
    assert_eq!(
        on_card(&rig.cam, &rels),
        [true, true, false, false, true, true],
        "the two the server changed stay; the next two go instead"
    );
    assert!(attention_codes(&rig)
        .await
        .contains(&"server_digest_mismatch".to_string()));
    let s = rig.status().await;
    let msg = s["attention"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "server_digest_mismatch")
        .unwrap()["message"]
        .to_string();
    assert!(msg.contains(&rels[0]) && msg.contains(&rels[1]), "{msg}");

    // Sent again, once each: a new upload, whole.
    for rel in &rels[..2] {
        eventually(T, "the changed files sent again", || async {
            uploads_of(&rig.rx, rel).len() == 2
        })
        .await;
        assert!(rig.rx.file_matches(rel, &rig.cam.media_path(rel)));
    }
    // The card is low again (a new photo): the next pass asks the new uploads' receipts, which
    // match, and frees them; the flag is over.
    let t0 = crate::common::real_now();
    rig.cam
        .write_sample("DCIM/100MEDIA/IMG_0009.JPG", 1024 * KIB);
    rig.rx.wait_for_completed(9, T).await;
    eventually(T, "the re-sent files freed on their receipts", || async {
        let _ = wait_for_a_pass_after(&rig, t0).await;
        on_card(&rig.cam, &rels)[..2] == [false, false]
    })
    .await;
    for rel in &rels[..2] {
        assert_eq!(freed_on(&rig, rel).await, "receipt");
    }
    assert!(
        !attention_codes(&rig)
            .await
            .contains(&"server_digest_mismatch".to_string()),
        "cleared once their receipts matched"
    );
    // Never a third time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(uploads_of(&rig.rx, &rels[0]).len(), 2);
    wire_is_unchanged_but_for_the_receipts_head(&rig.rx);
}

#[tokio::test]
async fn a_file_changed_on_the_card_since_its_upload_is_kept_though_the_receipt_matches() {
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    let rx = receiver(tusd_like()).await;
    let rig = uploaded(cam, rx, &rels).await;
    hold_uploads(&rig).await;
    // Edited in place: same inode, size and modification time, other bytes.
    let path = rig.cam.media_path(&rels[0]);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(3 * KIB)).unwrap();
        f.write_all(b"an edit the server never saw").unwrap();
        f.set_modified(mtime).unwrap();
    }
    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["freed_files"], 2, "{pass:#}");
    assert_eq!(
        on_card(&rig.cam, &rels),
        [true, false, false, true, true, true],
        "the edited file stays; the next two oldest go instead"
    );
    assert_eq!(freed_in_history(&rig).await, rels[1..3].to_vec());
    the_edit_was_kept_then_sent(&rig, &pass, &rels[0]).await;
}

#[tokio::test]
async fn an_upload_resumed_after_kill_9_mid_file_ends_with_the_right_digest_and_is_freed() {
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    // The oldest photo's first PATCH stalls after 64 KiB (kept by the server, as tusd keeps
    // what arrived); the daemon is killed meanwhile. No chunk was accepted: the resumed
    // upload's digest reads those 64 KiB back from the card and goes on with the rest.
    let rx = receiver(tusd_like()).await;
    rx.inject(
        Fault::stall_after(64 * KIB, Duration::from_secs(30)).for_paths_containing("IMG_0001"),
    );
    let mut rig = Rig::start_with(cam, rx).await;
    rig.go().await;
    eventually(T, "the first photo's PATCH", || async {
        rig.rx
            .uploads()
            .iter()
            .any(|u| u.storage_path() == Some(rels[0].as_str()) && u.offset >= 64 * KIB)
    })
    .await;
    rig.daemon.kill(Signal::Kill);
    assert!(rig.daemon.wait_exit(T).await.is_some(), "killed");
    rig.rx.clear_faults();
    rig.daemon.restart().await;
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    rig.expect_uploaded(&refs, T).await;
    assert_eq!(
        uploads_of(&rig.rx, &rels[0]).len(),
        1,
        "resumed, not sent anew"
    );
    let log = rig.daemon.log();
    assert!(
        log.contains("reading the part sent back from the card"),
        "the resume read the part sent back"
    );
    eventually(T, "six items done", || async {
        rig.items(Some("done")).await.len() == 6
    })
    .await;
    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["freed_files"], 2, "{pass:#}");
    assert_eq!(
        on_card(&rig.cam, &rels),
        [false, false, true, true, true, true]
    );
    assert_eq!(freed_on(&rig, &rels[0]).await, "receipt");
}

#[tokio::test]
async fn a_flagged_file_the_user_deleted_from_the_card_ends_the_flag() {
    let Some((cam, _card, rels)) = camera(old(), "receipt") else {
        return;
    };
    let rx = receiver(tusd_like()).await;
    let rig = uploaded(cam, rx, &rels).await;
    // Uploads held: the file queued again is not sent again before the user acts.
    hold_uploads(&rig).await;
    let first = uploads_of(&rig.rx, &rels[0]);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::File::options()
            .write(true)
            .open(rig.rx.data_path(&first[0].id))
            .unwrap();
        f.seek(std::io::SeekFrom::Start(1)).unwrap();
        f.write_all(&[0xa5]).unwrap();
    }
    let pass = free_and_wait_for_a_pass(&rig).await;
    assert_eq!(pass["kept"]["server_digest_mismatch"], 1, "{pass:#}");
    assert!(attention_codes(&rig)
        .await
        .contains(&"server_digest_mismatch".to_string()));
    // The user deletes it by hand: nothing is left to protect, the next pass ends the flag.
    std::fs::remove_file(rig.cam.media_path(&rels[0])).unwrap();
    crate::space::set_free_space(&rig, "off").await;
    let t0 = crate::common::real_now();
    crate::space::set_free_space(&rig, "when_low").await;
    let _ = wait_for_a_pass_after(&rig, t0).await;
    eventually(T, "server_digest_mismatch ended", || async {
        !attention_codes(&rig)
            .await
            .contains(&"server_digest_mismatch".to_string())
    })
    .await;
}
