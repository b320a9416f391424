//! Issue 23, part A: the product's promises on the card a camera really has. Each test runs on
//! a FAT32 card (testkit's `cardfs`: rust-fatfs through FUSE) and an exFAT card (`exfat-fuse` on a loop device), made and
//! mounted by testkit's `card::Card` on the camera's media root: the real drivers, with what they
//! do to a file's metadata (docs/cards.md). What a user would check: the bytes on the server,
//! what is sent once and only once, what is freed.
//!
//! Mounting needs root, `/dev/fuse` and the tools (`.ci/run` installs them): elsewhere each test
//! prints why it is skipped and passes; with `CI` set it fails instead.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::camera::FakeCamera;
use testkit::card::{self, Card, Fs};
use testkit::daemon::Signal;
use testkit::sample::{sample_bytes, seed_for};
use testkit::tus::{Fault, Receiver};

use crate::common::{
    assert_resumes, eventually, real_now, server_offset, uploading_a_big_video, Rig, Stopped, TOKEN,
};

const T: Duration = Duration::from_secs(30);
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const DAY: Duration = Duration::from_secs(86_400);
/// The cards' size: 4 KiB clusters on FAT32; sparse, so the size costs nothing.
const CARD_MIB: u64 = 300;

/// A card of `fs` of `mib` MiB, or why not (and a failure when `CI` is set).
fn card(fs: Fs, mib: u64) -> Option<Card> {
    match card::missing(fs) {
        None => Some(Card::new(fs, mib)),
        Some(why) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {why} (these tests run as root with the card tools, as in CI)");
            None
        }
        Some(why) => panic!("CI must run the card filesystem tests: {why}"),
    }
}

/// A camera with a fresh card of `fs` in its slot.
fn camera_with_card(fs: Fs, mib: u64) -> Option<(FakeCamera, Card)> {
    let mut card = card(fs, mib)?;
    let cam = FakeCamera::new();
    card.insert(&cam);
    Some((cam, card))
}

/// `$name` on both filesystems: `$name::fat32` and `$name::exfat`, each with its attributes.
macro_rules! on_both {
    ($name:ident $(, fat32: #[$fat:meta])? $(, exfat: #[$ex:meta])?) => {
        mod $name {
            use testkit::card::Fs;
            #[tokio::test]
            $(#[$fat])?
            async fn fat32() {
                super::$name(Fs::Fat32).await
            }
            #[tokio::test]
            $(#[$ex])?
            async fn exfat() {
                super::$name(Fs::Exfat).await
            }
        }
    };
}

/// Waits until `n` uploads are done in the queue.
async fn done(rig: &Rig, n: usize) {
    eventually(T, &format!("{n} items done"), || async {
        rig.items(Some("done")).await.len() == n
    })
    .await;
}

/// Each of `rels` byte-identical on the server, and no upload created more than once.
async fn sent_once(rig: &Rig, rels: &[String], what: &str) {
    sent_once_of(rig, rels, rels.len(), what).await
}

/// `new` (on the card now) byte-identical on the server, and `total` uploads in all, each
/// created once: nothing sent before is sent again.
async fn sent_once_of(rig: &Rig, new: &[String], total: usize, what: &str) {
    rig.rx.wait_for_completed(total, T).await;
    // Give a second send the time to start: a rescan queues within a second here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rig.rx.creations(),
        total,
        "{what}: each file created once on the server (more: sent again)\n{}",
        rig.rx.request_summary()
    );
    for rel in new {
        assert!(
            server_has_sample(rig, rel),
            "{what}: {rel} on the server is not what the test wrote on the card\n{}",
            rig.rx.request_summary()
        );
        // And read back through the card's driver: what the card holds.
        assert!(
            card_matches(rig, rel),
            "{what}: {rel} read back through the card's driver differs from the server's"
        );
    }
    done(rig, total).await;
    let s = rig.status().await;
    assert_eq!(s["queue"]["pending"], 0, "{what}: {s:#}");
}

/// Whether the server's bytes of `rel` are the card's, read through the driver.
fn card_matches(rig: &Rig, rel: &str) -> bool {
    rig.rx.file_matches(rel, &rig.cam.media_path(rel))
}

/// Whether the server's bytes of `rel` are those the test wrote (testkit's sample content,
/// seeded by the path): the check that does not read the card.
fn server_has_sample(rig: &Rig, rel: &str) -> bool {
    let Some(info) = rig
        .rx
        .completed_uploads()
        .into_iter()
        .rfind(|u| u.metadata.get("storage_path").map(String::as_str) == Some(rel))
    else {
        return false;
    };
    let (Ok(data), Ok(meta)) = (
        std::fs::read(rig.rx.data_path(&info.id)),
        std::fs::metadata(rig.cam.media_path(rel)),
    ) else {
        return false;
    };
    data.len() as u64 == meta.len() && data == sample_bytes(seed_for(rel), data.len())
}

/// The photos of the tests: a few sizes, a name with spaces, a second directory, and an empty
/// file; written through the driver, aged past the settle time.
fn photos(cam: &FakeCamera) -> Vec<String> {
    let mut rels = Vec::new();
    for (rel, len) in [
        ("DCIM/100MEDIA/IMG_0001.JPG", 3 * MIB + 17),
        ("DCIM/100MEDIA/IMG 0002 copy.JPG", 700 * KIB),
        ("DCIM/100MEDIA/empty.jpg", 0),
        ("DCIM/101MEDIA/VID_0003.MP4", 2 * MIB + 4095),
    ] {
        cam.write_sample(rel, len);
        cam.age_media(rel, Duration::from_secs(120));
        rels.push(rel.to_string());
    }
    rels
}

/// The backup end to end: the start scan finds what is on the card, and every file reaches
/// the server with its exact bytes, once.
async fn end_to_end_backup(fs: Fs) {
    let Some((cam, _card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let rels = photos(&cam);
    let rig = Rig::start(cam).await;
    rig.go().await;
    sent_once(&rig, &rels, "from the start scan").await;
}
on_both!(end_to_end_backup);

/// Files written while the daemon runs (into a directory made meanwhile, and a video written in
/// appends) are found by inotify on the FUSE mount and sent once settled, with their final bytes.
async fn the_watcher_and_the_scan(fs: Fs) {
    let Some((cam, _card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let first = cam.photo("IMG_0001.JPG", 300 * KIB);
    cam.age_media(&first, Duration::from_secs(120));
    let mut rig = Rig::start(cam).await;
    rig.go().await;
    rig.expect_uploaded(&[first.as_str()], T).await;

    let late = "DCIM/102MEDIA/IMG_0100.JPG";
    rig.cam.write_sample(late, 600 * KIB);
    let video = "DCIM/100MEDIA/VID_0101.MP4";
    rig.cam
        .write_media_slowly(video, 3 * MIB as usize, 6, Duration::from_millis(300))
        .await;
    let all = [first.clone(), late.to_string(), video.to_string()];
    sent_once(&rig, &all, "found by the watcher").await;

    // And what is written while the daemon is down is found by the scan at start.
    rig.daemon.stop().await;
    let offline = rig.cam.photo("IMG_0200.JPG", 200 * KIB);
    rig.cam.age_media(&offline, Duration::from_secs(120));
    rig.daemon.restart().await;
    let mut all = all.to_vec();
    all.push(offline);
    sent_once(&rig, &all, "found by the start scan after a restart").await;
}
on_both!(the_watcher_and_the_scan);

/// Waits until the daemon says the card is out (`media_available` false).
async fn card_out(rig: &Rig) {
    eventually(T, "the card seen out", || async {
        rig.status().await["media_available"] == false
    })
    .await;
}

/// The same card pulled and put back (a remount: both drivers renumber every inode) while the
/// daemon runs, and again while it is stopped: nothing already sent is sent again, and a photo
/// taken meanwhile is.
async fn the_same_card_put_back_sends_nothing_again(fs: Fs) {
    let Some((cam, mut card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let rels = photos(&cam);
    let mut rig = Rig::start(cam).await;
    rig.go().await;
    sent_once(&rig, &rels, "before the card is pulled").await;

    card.pull();
    card_out(&rig).await;
    card.put_back();
    let mut all = rels.clone();
    all.push(rig.cam.photo("IMG_0300.JPG", 100 * KIB));
    sent_once(&rig, &all, "after the card came back").await;

    // Read in another device while the daemon is down: another mount, other inode numbers.
    rig.daemon.stop().await;
    card.pull();
    card.put_back();
    rig.daemon.restart().await;
    all.push(rig.cam.photo("IMG_0301.JPG", 100 * KIB));
    sent_once(&rig, &all, "after a remount while the daemon was down").await;
}
on_both!(the_same_card_put_back_sends_nothing_again);

/// The same card read with other mount options: mounted again with the driver in another time
/// zone (FAT's stamps are local time, read in the mount's zone, so every mtime moves by the offset;
/// exFAT keeps a UTC offset and does not move). Nothing already sent is sent again.
async fn the_same_card_in_another_time_zone_sends_nothing_again(fs: Fs) {
    let Some((cam, mut card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let rels = photos(&cam);
    let mut rig = Rig::start(cam).await;
    rig.go().await;
    sent_once(&rig, &rels, "before the card is pulled").await;
    rig.daemon.stop().await;
    card.pull();
    let slot = card.mount_point().unwrap().to_path_buf();
    card.mount_with(
        &slot,
        card::MountOptions {
            tz: Some("Asia/Tokyo".into()),
            ..card::MountOptions::default()
        },
    );
    rig.daemon.restart().await;
    let mut all = rels.clone();
    all.push(rig.cam.photo("IMG_0700.JPG", 100 * KIB));
    sent_once(&rig, &all, "after a remount in another time zone").await;
}
on_both!(the_same_card_in_another_time_zone_sends_nothing_again);

/// The card pulled and put back at once (quicker than the daemon looks at the slot, every
/// 5 s): the watches of the first mount are gone with it, yet a photo taken after is sent within
/// seconds, not at the next periodic rescan (`rescan_secs`, 600 here). A FUSE card may come back
/// with the same device number (like a kernel driver on the same block device), so the root's
/// identity does not tell the daemon.
async fn a_card_pulled_and_put_back_at_once_is_watched_again(fs: Fs) {
    let Some((cam, mut card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let rels = photos(&cam);
    let rig = Rig::start(cam).await;
    rig.go().await;
    sent_once(&rig, &rels, "before the card is pulled").await;
    card.pull();
    card.put_back();
    let mut all = rels.clone();
    all.push(rig.cam.photo("IMG_0400.JPG", 100 * KIB));
    sent_once(&rig, &all, "a photo taken after the card came back").await;
}
on_both!(a_card_pulled_and_put_back_at_once_is_watched_again);

/// Another card in the slot: its photos are sent, those of the card that is out are not taken
/// for deleted ones, and the first card put back sends nothing again.
async fn another_card_put_in(fs: Fs) {
    let Some((cam, mut first)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let rels = photos(&cam);
    let rig = Rig::start(cam).await;
    rig.go().await;
    sent_once(&rig, &rels, "the first card").await;

    first.pull();
    card_out(&rig).await;
    let Some(mut second) = card(fs, CARD_MIB) else {
        return;
    };
    assert_ne!(second.volume_serial(), first.volume_serial());
    second.insert(&rig.cam);
    let new: Vec<String> = ["IMG_0500.JPG", "IMG_0501.JPG"]
        .map(|name| rig.cam.photo(name, 400 * KIB))
        .to_vec();
    sent_once_of(&rig, &new, rels.len() + 2, "the second card").await;

    second.pull();
    card_out(&rig).await;
    first.put_back();
    let back = [rig.cam.photo("IMG_0600.JPG", 100 * KIB)];
    let mut on_first = rels.clone();
    on_first.extend(back.iter().cloned());
    sent_once_of(&rig, &on_first, rels.len() + 3, "the first card back").await;
    let s = rig.status().await;
    assert_eq!(s["queue"]["skipped"], 0, "nothing taken for deleted: {s:#}");
}
on_both!(another_card_put_in);

/// Killed with SIGKILL in the middle of a big video's upload, the daemon resumes it from the
/// server's offset: one creation, a HEAD, the next PATCH at that offset, the bytes identical.
async fn resumes_after_kill_9(fs: Fs) {
    let Some((cam, _card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let (mut rig, rel) = uploading_a_big_video(cam).await;
    rig.daemon.kill(Signal::Kill);
    assert!(rig.daemon.wait_exit(T).await.is_some());
    let stopped = Stopped {
        requests: rig.rx.requests().len(),
        offset: server_offset(&rig.rx),
    };
    rig.daemon.restart().await;
    assert_resumes(&rig, &rel, &stopped).await;
}
on_both!(resumes_after_kill_9);

/// As above, with the card remounted while the daemon is down (read in another device): the
/// upload resumes on the same server upload, not a second one.
async fn resumes_after_kill_9_and_a_remount(fs: Fs) {
    let Some((cam, mut card)) = camera_with_card(fs, CARD_MIB) else {
        return;
    };
    let (mut rig, rel) = uploading_a_big_video(cam).await;
    rig.daemon.kill(Signal::Kill);
    assert!(rig.daemon.wait_exit(T).await.is_some());
    let stopped = Stopped {
        requests: rig.rx.requests().len(),
        offset: server_offset(&rig.rx),
    };
    card.pull();
    card.put_back();
    rig.daemon.restart().await;
    assert_resumes(&rig, &rel, &stopped).await;
}
on_both!(resumes_after_kill_9_and_a_remount);

/// The card's size and free bytes, as statvfs reports them through the driver.
fn card_space(cam: &FakeCamera) -> (u64, u64) {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b %a %S"])
        .arg(cam.media_root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (n[0] * n[2], n[1] * n[2])
}

async fn pass_after(rig: &Rig, t0: i64) -> Value {
    let end = tokio::time::Instant::now() + T;
    loop {
        let pass = rig.status().await["space"]["last_pass"].clone();
        // A pass that started at t0 or later and saw the setting on (passes are 2 s apart).
        if !pass["held_by"].to_string().contains("free_space_off")
            && pass["at"].as_i64().is_some_and(|at| at >= t0)
        {
            return pass;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no freeing pass after {t0} within {T:?}: last {pass:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Freeing space on a card image: six backed-up photos, old enough, leave about a quarter of
/// the card free; with freeing at 40 % (and its 5-point margin) the oldest go, and only as many
/// as bring the card back over 45 %.
async fn freeing_space(fs: Fs) {
    // Small, so a quarter of it is a few MiB.
    let Some((cam, _card)) = camera_with_card(fs, 40) else {
        return;
    };
    let (total, free) = card_space(&cam);
    assert!(total > 0, "{fs:?}: the card's driver reports its size");
    // Six photos that leave 25 % of the card free.
    let each = (free - total / 4) / 6 / (64 * KIB) * (64 * KIB);
    let rels: Vec<String> = (1..=6)
        .map(|i| {
            let rel = cam.photo(&format!("IMG_000{i}.JPG"), each);
            cam.age_media(&rel, DAY * (31 - i));
            rel
        })
        .collect();
    cam.with("media", "free_space_below_percent", "40")
        .with("media", "keep_days", "7")
        .with("media", "free_space_verify", "\"checksum\"");
    let rx = Receiver::builder().token(TOKEN).start().await;
    let rig = Rig::start_with(cam, rx).await;
    rig.go().await;
    sent_once(&rig, &rels, "before freeing").await;

    let t0 = real_now();
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"free_space": "when_low"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let pass = pass_after(&rig, t0).await;
    let on_card: Vec<bool> = rels
        .iter()
        .map(|r| rig.cam.media_path(r).exists())
        .collect();
    let freed = on_card.iter().filter(|on| !**on).count();
    assert!(freed > 0, "{pass:#}");
    assert_eq!(pass["freed_files"], freed, "{pass:#}");
    assert!(
        on_card[..freed].iter().all(|on| !on) && on_card[freed..].iter().all(|on| *on),
        "the oldest first: {on_card:?}"
    );
    let (_, free_now) = card_space(&rig.cam);
    assert!(
        free_now * 100 >= total * 45,
        "back over 45 %: {free_now} of {total}"
    );
    // One fewer would not have done: only what was needed went.
    assert!(
        (free_now - each) * 100 < total * 45,
        "more than needed freed: {free_now} of {total}"
    );
    let s = rig.status().await;
    assert_eq!(
        s["queue"]["pending"], 0,
        "nothing freed is queued again: {s:#}"
    );
}
on_both!(freeing_space);

const GIB: u64 = 1 << 30;
const CHUNK_MIB: u64 = 64;
const CHUNK: u64 = CHUNK_MIB * MIB;
/// Where in its body the first PATCH past 4 GiB stalls: an odd offset to resume from.
const STALL_AT: u64 = 12_345;

/// A file over 4 GiB on an exFAT card (FAT32 cannot hold one) goes up whole, and resumes past
/// 4 GiB after a kill -9, at the odd offset the server holds (tests/it/large.rs does the same on
/// the host's filesystem). exfat-fuse writes a sparse file's zeros out (it keeps no "valid data
/// length"), so the card image takes 4.2 GB of the host's disk for the test's life.
#[tokio::test]
async fn a_file_over_4_gib_on_exfat_resumes_past_4_gib_after_a_kill() {
    let Some((cam, _card)) = camera_with_card(Fs::Exfat, 4400) else {
        return;
    };
    let size = 4 * GIB + 2 * CHUNK + 4321;
    let rel = "DCIM/100MEDIA/VID_4GIB.MP4";
    let f = File::create(cam.media_path(rel)).unwrap();
    f.set_len(size).unwrap();
    for at in [0, 4 * GIB - 2048, 4 * GIB + CHUNK + 100, size - 4096] {
        f.write_all_at(&[(at >> 20) as u8 | 1; 4096], at).unwrap();
    }
    drop(f);
    cam.age_media(rel, Duration::from_secs(120));
    cam.with("cloud", "chunk_sizing", "\"fixed\"");
    cam.with("cloud", "chunk_size_mib", &CHUNK_MIB.to_string());
    // Without checksums a PATCH cut short keeps what arrived: the resume starts past 4 GiB at
    // an odd offset, not at a chunk boundary.
    let rx = Receiver::builder()
        .token(TOKEN)
        .without_checksum()
        .start()
        .await;
    let mut rig = Rig::start_with(cam, rx).await;
    rig.go().await;
    let long = Duration::from_secs(600);
    eventually(long, "4 GiB on the server", || async {
        server_offset(&rig.rx) >= 4 * GIB
    })
    .await;
    rig.rx
        .inject(Fault::stall_after(STALL_AT, Duration::from_secs(600)));
    eventually(T, "a PATCH stalled past 4 GiB", || async {
        let o = server_offset(&rig.rx);
        o > 4 * GIB && o % CHUNK == STALL_AT
    })
    .await;
    let stopped = server_offset(&rig.rx);
    let requests = rig.rx.requests().len();
    rig.daemon.kill(Signal::Kill);
    assert!(rig.daemon.wait_exit(T).await.is_some());
    rig.daemon.restart().await;
    rig.rx.wait_for_completed(1, long).await;
    let patch = rig.rx.requests()[requests..]
        .iter()
        .find(|r| r.method == "PATCH")
        .cloned()
        .expect("a PATCH after the restart");
    assert_eq!(
        patch.header("upload-offset"),
        Some(stopped.to_string().as_str()),
        "resumed at the server's offset:{}",
        rig.rx.request_summary()
    );
    assert_eq!(rig.rx.creations(), 1, "{}", rig.rx.request_summary());
    let info = &rig.rx.completed_uploads()[0];
    assert_eq!((info.length, info.offset), (size, size));
    assert!(
        rig.rx.file_matches(rel, &rig.cam.media_path(rel)),
        "not byte-identical on the server"
    );
}
