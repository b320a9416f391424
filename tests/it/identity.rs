//! Issue 23, part B: a file's identity on real FAT32 and exFAT cards (testkit's card helper).
//! What a user would check: a card put back is not sent again, whatever the mount did to its
//! stamps; a reformatted card's new photos all go up, though they reuse names, sizes and the
//! 1980 stamp; an edit in place goes up as a new version; a card that is out is waited for.

use std::time::{Duration, SystemTime};

use testkit::camera::FakeCamera;
use testkit::card::{self, Card, Fs, MountOptions};

use serde_json::json;

use crate::common::{eventually, Rig};

const T: Duration = Duration::from_secs(30);

/// The filesystems this machine can mount; outside CI a missing tool skips (said on stderr),
/// in CI it fails.
fn filesystems() -> Vec<Fs> {
    Fs::ALL
        .into_iter()
        .filter(|fs| match card::missing(*fs) {
            None => true,
            Some(why) if std::env::var_os("CI").is_some() => panic!("{}: {why}", fs.name()),
            Some(why) => {
                eprintln!("SKIPPED on {}: {why}", fs.name());
                false
            }
        })
        .collect()
}

/// A camera whose media root is a freshly made card of `fs`, mounted.
fn camera_with_card(fs: Fs) -> (FakeCamera, Card) {
    let cam = FakeCamera::new();
    let mut card = Card::new(fs, 40);
    card.insert(&cam);
    (cam, card)
}

/// The 1980 floor a camera without a clock stamps its files at (local time on FAT: the card
/// is mounted in UTC here).
fn floor() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(315_532_800)
}

/// Sets both stamps: FUSE 2 drops a `utimens` that sets the mtime alone.
fn set_mtime(path: &std::path::Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), t);
}

/// Waits until the daemon has seen the card out.
async fn card_out(rig: &Rig) {
    eventually(T, "the card seen out", || async {
        rig.status().await["media_available"] == false
    })
    .await;
}

/// `n` bytes that differ with `seed`.
fn bytes(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a marker photo and waits until it is sent: the card was seen (again) and scanned.
async fn marker(rig: &Rig, name: &str, total: usize) {
    let rel = rig.cam.photo(name, 1234);
    rig.rx.wait_for_completed(total, T).await;
    assert!(rig.rx.file_matches(&rel, &rig.cam.media_path(&rel)));
}

#[tokio::test]
async fn the_same_bytes_after_a_remount_under_another_time_zone_are_not_sent_again() {
    for fs in filesystems() {
        let (cam, mut card) = camera_with_card(fs);
        let names = ["DSC00001.JPG", "DSC00002.JPG", "MVI00003.MP4"];
        let rels: Vec<String> = names
            .iter()
            .zip([3_000u64, 900_000, 2_500_000])
            .map(|(n, len)| cam.photo(n, len))
            .collect();
        let rig = Rig::start(cam).await;
        rig.go().await;
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        rig.expect_uploaded(&refs, T).await;
        let before: Vec<_> = rels
            .iter()
            .map(|r| {
                std::fs::metadata(rig.cam.media_path(r))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect();
        // Pulled, and read back on a device five hours ahead (FAT's local stamps are read in
        // the mount's zone; exFAT keeps its offset; both number inodes anew).
        card.pull();
        card_out(&rig).await;
        card.mount_with(
            &rig.cam.media_root(),
            MountOptions {
                tz: Some("UTC-5".into()),
                ..Default::default()
            },
        );
        let after: Vec<_> = rels
            .iter()
            .map(|r| {
                std::fs::metadata(rig.cam.media_path(r))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect();
        if fs == Fs::Fat32 {
            assert_ne!(before, after, "FAT's stamps move with the zone");
        }
        marker(&rig, "MARKER01.JPG", rels.len() + 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            rig.rx.creations(),
            rels.len() + 1,
            "{}: only the new photo went up after the remount\n{}",
            fs.name(),
            rig.rx.request_summary()
        );
        drop(rig);
        drop(card);
    }
}

#[tokio::test]
async fn a_reformatted_cards_new_files_with_reused_names_sizes_and_floor_stamps_are_all_sent() {
    for fs in filesystems() {
        let (cam, mut card) = camera_with_card(fs);
        let names = ["DSC00001.JPG", "DSC00002.JPG", "DSC00003.JPG"];
        let sizes = [4_000usize, 700_000, 1_500_000];
        let write_all = |cam: &FakeCamera, seed: u8| -> Vec<String> {
            names
                .iter()
                .zip(sizes)
                .map(|(n, len)| {
                    let rel = format!("DCIM/100MEDIA/{n}");
                    let p = cam.write_media(&rel, &bytes(seed, len));
                    set_mtime(&p, floor());
                    rel
                })
                .collect()
        };
        let rels = write_all(&cam, 1);
        let rig = Rig::start(cam).await;
        rig.go().await;
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        rig.expect_uploaded(&refs, T).await;
        // The camera formats the card (a new serial) and shoots again from DSC00001, with the
        // same sizes and, still without a clock, the same stamps.
        card.pull();
        card_out(&rig).await;
        card.reformat();
        card.put_back();
        let again = write_all(&rig.cam, 2);
        assert_eq!(again, rels);
        eventually(T, "every new photo sent", || async {
            rig.rx.completed_uploads().len() >= 2 * names.len()
        })
        .await;
        for rel in &rels {
            assert!(
                rig.rx.file_matches(rel, &rig.cam.media_path(rel)),
                "{}: {rel}: the reformatted card's photo is the last one sent\n{}",
                fs.name(),
                rig.rx.request_summary()
            );
        }
        drop(rig);
        drop(card);
    }
}

#[tokio::test]
async fn an_edit_in_place_that_keeps_size_and_stamp_is_sent_as_a_new_version() {
    use std::io::{Seek, Write};
    for fs in filesystems() {
        let (cam, card) = camera_with_card(fs);
        let rel = cam.photo("DSC00001.JPG", 800_000);
        let rig = Rig::start(cam).await;
        rig.go().await;
        rig.expect_uploaded(&[&rel], T).await;
        let path = rig.cam.media_path(&rel);
        let stamp = std::fs::metadata(&path).unwrap().modified().unwrap();
        // The camera rewrites the header in place (a rating, a rotation): same size, and the
        // stamp put back as it was.
        let mut f = std::fs::File::options().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(100)).unwrap();
        f.write_all(b"rotated 90 degrees").unwrap();
        drop(f);
        set_mtime(&path, stamp);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 800_000);
        eventually(T, "the edited photo sent again", || async {
            rig.rx.completed_uploads().len() >= 2
        })
        .await;
        assert!(
            rig.rx.file_matches(&rel, &path),
            "{}: the server has the edited bytes\n{}",
            fs.name(),
            rig.rx.request_summary()
        );
        drop(rig);
        drop(card);
    }
}

#[tokio::test]
async fn a_manual_upload_naming_a_file_in_another_case_reaches_it_never_a_second_item() {
    for fs in filesystems() {
        let (cam, card) = camera_with_card(fs);
        let rel = cam.photo("IMG_0001.JPG", 5_000);
        let rig = Rig::start(cam).await;
        // Paired, consent off: the scan queues the photo, nothing goes up by itself.
        rig.pair().await;
        eventually(T, "the photo queued by the scan", || async {
            rig.items(None).await.len() == 1
        })
        .await;
        let (code, body) = rig
            .daemon
            .api(
                "POST",
                "/v1/uploads",
                Some(json!({"paths": ["dcim/100media/img_0001.jpg"]})),
            )
            .await;
        assert_eq!(code, 202, "{}: {body}", fs.name());
        assert_eq!(body["accepted"][0]["path"], rel.as_str(), "{body}");
        rig.expect_uploaded(&[&rel], T).await;
        let items = rig.items(None).await;
        assert_eq!(items.len(), 1, "{}: one item: {items:#?}", fs.name());
        assert_eq!(items[0]["storage_path"], rel.as_str());
        assert_eq!(rig.rx.creations(), 1);
        drop(rig);
        drop(card);
    }
}

#[tokio::test]
async fn a_read_only_card_is_backed_up_and_never_freed() {
    for fs in filesystems() {
        let cam = FakeCamera::new();
        let mut card = Card::new(fs, 40);
        card.insert(&cam);
        let rels: Vec<String> = (1..=4)
            .map(|i| {
                let rel = cam.photo(&format!("IMG_000{i}.JPG"), 6 * 1024 * 1024);
                cam.age_media(&rel, Duration::from_secs(86_400 * 30));
                rel
            })
            .collect();
        // The write-protect switch on.
        card.pull();
        card.mount_read_only(&cam.media_root());
        cam.with("media", "free_space_below_percent", "90")
            .with("media", "keep_days", "7")
            .with("media", "free_space_verify", "\"checksum\"");
        let rig = Rig::start(cam).await;
        rig.go().await;
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        rig.expect_uploaded(&refs, T).await;
        let (code, body) = rig
            .daemon
            .api(
                "PATCH",
                "/v1/settings",
                Some(json!({"free_space": "when_low"})),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        eventually(T, "a pass held by the read-only card", || async {
            let pass = rig.status().await["space"]["last_pass"].clone();
            pass["held_by"].to_string().contains("card_read_only")
        })
        .await;
        let (code, space) = rig.daemon.api("GET", "/v1/space", None).await;
        assert_eq!(code, 200, "{space}");
        assert!(
            space["held_by"].to_string().contains("card_read_only"),
            "{}: {space:#}",
            fs.name()
        );
        for rel in &rels {
            assert!(rig.cam.media_path(rel).exists(), "{rel} still on the card");
        }
        assert_eq!(rig.status().await["card"]["read_only"], true);
        drop(rig);
        drop(card);
    }
}

#[tokio::test]
async fn a_photo_of_the_card_that_is_out_waits_for_its_card_and_goes_up_when_it_is_back() {
    for fs in filesystems() {
        let cam = FakeCamera::new();
        let mut first = Card::with_label(fs, 40, "TRIP_A");
        first.insert(&cam);
        let rel = cam.photo("GOPR0001.JPG", 3_000);
        let rig = Rig::start(cam).await;
        // Consent off: nothing goes up yet.
        rig.pair().await;
        eventually(T, "card A's photo queued", || async {
            rig.paths("pending").await == [rel.clone()]
        })
        .await;
        first.pull();
        card_out(&rig).await;
        let mut second = Card::with_label(fs, 40, "TRIP_B");
        second.insert(&rig.cam);
        rig.cam.photo("GOPR0001.JPG", 4_000);
        eventually(T, "card A's photo waiting for its card", || async {
            rig.items(Some("skipped"))
                .await
                .iter()
                .any(|i| i["reason"] == "waiting_for_card")
        })
        .await;
        // Card B's photo was written after its mount, which the daemon now sees at once
        // (the mount table tells): the scan may come before the photo, which then settles.
        eventually(T, "card B's photo counted", || async {
            rig.status().await["card"]["files_total"] == 2
        })
        .await;
        let waiting = rig.items(Some("skipped")).await;
        assert_eq!(waiting.len(), 1, "{waiting:#?}");
        assert_eq!(waiting[0]["card"], first.volume_serial().as_str());
        assert_ne!(
            waiting[0]["last_error"],
            "replaced by a newer version of the file",
            "{}",
            fs.name()
        );
        let status = rig.status().await;
        assert_eq!(status["queue"]["waiting_for_card"], 1, "{status:#}");
        assert_eq!(
            status["card"]["waiting_for"][0]["card"], "TRIP_A",
            "{status:#}"
        );
        assert_eq!(status["card"]["files_backed_up"], 0);
        assert_eq!(status["card"]["files_total"], 2, "card B's and card A's");
        // Card A back, consent on: its photo goes up, then card B's when it is back too.
        second.pull();
        card_out(&rig).await;
        first.put_back();
        rig.consent(true).await;
        rig.rx.wait_for_completed(1, T).await;
        assert!(rig.rx.file_matches(&rel, &rig.cam.media_path(&rel)));
        assert_eq!(rig.rx.completed_uploads()[0].length, 3_000);
        drop(rig);
        drop(first);
        drop(second);
    }
}

#[tokio::test]
async fn a_card_pulled_and_put_back_at_once_is_watched_again_and_sends_nothing_twice() {
    for fs in filesystems() {
        let (cam, mut card) = camera_with_card(fs);
        let rel = cam.photo("DSC00001.JPG", 200_000);
        let rig = Rig::start(cam).await;
        rig.go().await;
        rig.expect_uploaded(&[&rel], T).await;
        // Out and in again faster than the daemon looks at the slot (every 5 s): the same
        // device number and root inode, a new mount, and the old mount's watches gone.
        card.pull();
        card.put_back();
        // A photo taken now is seen (by the scan of the new mount, the old mount's watches
        // being dead), and the first one is not sent again.
        let new = rig.cam.photo("DSC00002.JPG", 300_000);
        rig.rx.wait_for_completed(2, T).await;
        assert!(rig.rx.file_matches(&new, &rig.cam.media_path(&new)));
        assert_eq!(rig.rx.creations(), 2, "{}", fs.name());
        drop(rig);
        drop(card);
    }
}
