//! Issue 23, part B: a file's identity on real FAT32 and exFAT cards (testkit's card helper).
//! What a user would check: a card put back is not sent again, whatever the mount did to its
//! stamps; a reformatted card's new photos all go up, though they reuse names, sizes and the
//! 1980 stamp; an edit in place goes up as a new version; a card that is out is waited for.

use std::time::{Duration, SystemTime};

use testkit::camera::FakeCamera;
use testkit::card::{self, Card, Fs, MountOptions};

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
            .map(|r| std::fs::metadata(rig.cam.media_path(r)).unwrap().modified().unwrap())
            .collect();
        // Pulled, and read back on a device five hours ahead (fusefat reads FAT's local stamps
        // in the driver's zone; exFAT keeps its offset; both number inodes anew).
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
            .map(|r| std::fs::metadata(rig.cam.media_path(r)).unwrap().modified().unwrap())
            .collect();
        if fs == Fs::Fat32 {
            assert_ne!(before, after, "fusefat moves FAT's stamps with the zone");
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
