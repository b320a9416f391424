use super::*;
use crate::config;
use crate::store::ItemState;

fn filter() -> MediaFilter {
    config::Media::default().filter
}

impl CardRoot<'_> {
    /// A card at `root` without `mount_required`.
    fn at(root: &Path) -> CardRoot<'_> {
        CardRoot {
            root,
            mount_required: false,
        }
    }
}

/// One full scan of the card at `r` with the default filter and a 10 s settle time.
fn scan_with(r: &Path, store: &Store, card: Option<&str>) -> Report {
    scan(
        CardRoot::at(r),
        &filter(),
        store,
        Duration::from_secs(10),
        card,
    )
    .unwrap()
}

fn old(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    let t = SystemTime::now() - Duration::from_secs(3600);
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

fn paths(store: &Store, state: ItemState) -> Vec<String> {
    let mut v: Vec<String> = store
        .list(Some(state), 1000, 0)
        .unwrap()
        .into_iter()
        .map(|i| i.storage_path.as_str().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn queues_media_with_exact_names_and_skips_the_rest() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    old(&r.join("DCIM/100MEDIA/a b,c.JPG"), b"1");
    old(&r.join("DCIM/100MEDIA/ünï cødé.mp4"), b"22");
    old(&r.join("DCIM/101MEDIA/nested/deep/zero.jpeg"), b"");
    old(&r.join("DCIM/100MEDIA/thumb.THM"), b"x");
    old(&r.join("DCIM/100MEDIA/.hidden.jpg"), b"x");
    old(&r.join("DCIM/.trash/gone.jpg"), b"x");
    old(&r.join("DCIM/notes.txt"), b"x");
    std::os::unix::fs::symlink("/etc/passwd", r.join("DCIM/link.jpg")).unwrap();
    std::os::unix::fs::symlink("/etc", r.join("DCIM/linkdir")).unwrap();
    let fifo =
        std::ffi::CString::new(r.join("DCIM/pipe.jpg").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let store = Store::open(state.path()).unwrap();
    let rep = scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.queued, 3);
    // Nothing left out silently: each entry it passed over is counted by why.
    assert_eq!(
        rep.skipped,
        Skipped {
            excluded_type: 2,
            excluded_path: 2,
            link: 2,
            not_regular_file: 1,
            ..Skipped::default()
        },
        "THM and txt; .hidden.jpg and .trash; two links; a FIFO"
    );
    // `why` judges one path by the same rules.
    let look = |p: &str| {
        look_at(
            r,
            &filter(),
            Duration::from_secs(10),
            &StoragePath::from_stored(p.into()),
            SystemTime::now(),
        )
    };
    let out = |w| OnCard::LeftOut(w);
    assert_eq!(look("DCIM/100MEDIA/thumb.THM"), out(LeftOut::ExcludedType));
    assert_eq!(
        look("DCIM/100MEDIA/.hidden.jpg"),
        out(LeftOut::ExcludedPath)
    );
    assert_eq!(look("DCIM/.trash/gone.jpg"), out(LeftOut::ExcludedPath));
    assert_eq!(look("DCIM/link.jpg"), out(LeftOut::Link));
    assert_eq!(look("DCIM/linkdir/passwd"), out(LeftOut::Link));
    assert_eq!(look("DCIM/pipe.jpg"), out(LeftOut::NotRegularFile));
    assert_eq!(look("DCIM/100MEDIA"), out(LeftOut::NotRegularFile));
    assert_eq!(look("DCIM/nothing.jpg"), OnCard::Missing);
    let gone_root = look_at(
        &r.join("card.removed"),
        &filter(),
        Duration::from_secs(10),
        &StoragePath::from_stored("DCIM/100MEDIA/a b,c.JPG".into()),
        SystemTime::now(),
    );
    assert_eq!(
        gone_root,
        OnCard::Missing,
        "a root that is gone holds nothing"
    );
    assert!(matches!(
        look("DCIM/100MEDIA/a b,c.JPG"),
        OnCard::Media { size: 1, .. }
    ));
    std::fs::write(r.join("DCIM/new.jpg"), b"abc").unwrap();
    assert!(matches!(
        look("DCIM/new.jpg"),
        OnCard::Unsettled { size: 3, .. }
    ));
    assert_eq!(
        paths(&store, ItemState::Pending),
        [
            "DCIM/100MEDIA/a b,c.JPG",
            "DCIM/100MEDIA/ünï cødé.mp4",
            "DCIM/101MEDIA/nested/deep/zero.jpeg"
        ]
    );
    // A second scan finds nothing new.
    let rep = scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!((rep.queued, rep.dropped), (0, 0));
}

#[test]
fn recent_files_go_to_the_settler_not_the_queue() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(card.path().join("DCIM")).unwrap();
    std::fs::write(card.path().join("DCIM/new.MP4"), b"still writing").unwrap();
    let store = Store::open(state.path()).unwrap();
    let rep = scan(
        CardRoot::at(card.path()),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.queued, 0);
    assert_eq!(rep.recent.len(), 1);
    assert_eq!(rep.recent[0].size, 13);
}

#[test]
fn deleted_and_replaced_files_leave_the_queue_with_a_reason_but_not_when_the_card_is_out() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    old(&r.join("DCIM/a.jpg"), b"a");
    old(&r.join("DCIM/b.jpg"), b"b");
    old(&r.join("DCIM/c.jpg"), b"c");
    let store = Store::open(state.path()).unwrap();
    scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();

    // Card out: the root is an empty mount point. Nothing is dropped.
    let aside = tempfile::tempdir().unwrap();
    std::fs::rename(r.join("DCIM"), aside.path().join("DCIM")).unwrap();
    let rep = scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.dropped, 0);
    assert_eq!(paths(&store, ItemState::Pending).len(), 3);

    // Card back, with one file deleted and one rewritten.
    std::fs::rename(aside.path().join("DCIM"), r.join("DCIM")).unwrap();
    std::fs::remove_file(r.join("DCIM/a.jpg")).unwrap();
    old(&r.join("DCIM/b.jpg"), b"b, version two");
    let rep = scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(
        (rep.queued, rep.dropped),
        (1, 1),
        "new b queued, a dropped (old b superseded on insert)"
    );
    let skipped = store.list(Some(ItemState::Skipped), 10, 0).unwrap();
    let reasons: Vec<_> = skipped
        .iter()
        .map(|i| (i.storage_path.as_str(), i.last_error.as_deref().unwrap()))
        .collect();
    assert!(
        reasons.contains(&("DCIM/a.jpg", store::REASON_DELETED)),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("DCIM/b.jpg", store::REASON_REPLACED)),
        "{reasons:?}"
    );
    assert_eq!(
        paths(&store, ItemState::Pending),
        ["DCIM/b.jpg", "DCIM/c.jpg"]
    );
}

#[test]
fn a_missing_card_is_neither_unreadable_entries_nor_deletions() {
    // What a scan started just as the card was pulled finds: no root. Its absence is the
    // watcher's `media_unavailable`, not an entry the card could not give.
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = &card.path().join("card");
    old(&r.join("DCIM/a.jpg"), b"a");
    let store = Store::open(state.path()).unwrap();
    scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    std::fs::rename(r, card.path().join("away")).unwrap();
    let rep = scan(
        CardRoot::at(r),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!((rep.unreadable, rep.dropped), (0, 0), "{rep:?}");
    assert!(rep.card_gone);
    assert_eq!(paths(&store, ItemState::Pending), ["DCIM/a.jpg"]);
}

#[test]
fn with_mount_required_only_a_mounted_card_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = &dir.path().join("sdcard");
    let card = |mount_required| CardRoot {
        root,
        mount_required,
    };
    assert!(
        !card(false).present() && !card(true).present(),
        "no root at all"
    );
    std::fs::create_dir(root).unwrap();
    assert!(
        !card(false).present(),
        "an empty directory is a removed card"
    );
    std::fs::write(root.join("IMG_0001.JPG"), b"x").unwrap();
    assert!(card(false).present());
    assert!(
        !card(true).present(),
        "a file in a mount point with nothing mounted is not a card"
    );
    // A mounted file system on the root (needs root): a card, even an empty one.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(root)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIPPED the mounted half: cannot mount a tmpfs (needs root)");
        return;
    }
    let present = (card(true).present(), card(false).present());
    let _ = std::process::Command::new("umount").arg(root).status();
    assert_eq!(present, (true, false), "an empty card, mounted");
    assert!(!card(true).present(), "unmounted again");
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn a_file_with_an_mtime_ahead_of_the_clock_stays_queued_across_scans() {
    // A camera without an RTC battery boots at 1970: every file it writes before NTP is
    // "in the future", so the scan keeps handing it to the settler, which queues it.
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let f = card.path().join("DCIM/FUTURE.JPG");
    old(&f, b"shot before the clock was set");
    set_mtime(&f, SystemTime::now() + Duration::from_secs(86_400 * 365));
    let store = Store::open(state.path()).unwrap();
    let rep = scan(
        CardRoot::at(card.path()),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.recent.len(), 1, "not settled by the wall clock");
    // The settler queues it (unchanged for three settle times).
    let r = &rep.recent[0];
    store
        .upsert_files(&[FoundFile {
            path: StoragePath::under(card.path(), &r.path).unwrap(),
            kind: crate::media::Kind::Photo,
            size: r.size,
            mtime_ns: r.mtime_ns,
        }])
        .unwrap();
    // The next full scan still sees it as "recent": it must not drop the queued item.
    let rep = scan(
        CardRoot::at(card.path()),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.dropped, 0);
    assert_eq!(paths(&store, ItemState::Pending), ["DCIM/FUTURE.JPG"]);
}

#[test]
fn a_card_swapped_for_one_that_reuses_names_and_back_loses_neither() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    let store = Store::open(state.path()).unwrap();
    let scan_now = || scan_with(r, &store, None);
    old(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), b"card A");
    let a_mtime = std::fs::metadata(r.join("DCIM/100GOPRO/GOPR0001.JPG"))
        .unwrap()
        .modified()
        .unwrap();
    scan_now();
    // Card B: same name, other bytes.
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), b"card B's photo");
    let b_mtime = std::fs::metadata(r.join("DCIM/100GOPRO/GOPR0001.JPG"))
        .unwrap()
        .modified()
        .unwrap();
    scan_now();
    // Card A again.
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), b"card A");
    set_mtime(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), a_mtime);
    let revived = scan_now();
    assert_eq!(revived.queued, 1, "card A's own item, revived");
    assert_eq!(store.list(None, 10, 0).unwrap().len(), 2, "no third item");
    let sizes = |st| -> Vec<u64> {
        store
            .list(Some(st), 10, 0)
            .unwrap()
            .iter()
            .map(|i| i.size)
            .collect()
    };
    assert!(
        sizes(ItemState::Pending).contains(&6),
        "card A's file waits again"
    );
    // Card B back: its file waits again too.
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), b"card B's photo");
    set_mtime(&r.join("DCIM/100GOPRO/GOPR0001.JPG"), b_mtime);
    scan_now();
    assert!(
        sizes(ItemState::Pending).contains(&14),
        "card B's file waits again"
    );
}

#[test]
fn a_directory_whose_name_is_not_utf8_is_walked_and_its_files_named_reversibly() {
    use std::os::unix::ffi::OsStrExt;
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // "Café" in ISO 8859-1, as vfat with its default iocharset shows it.
    let dir = card
        .path()
        .join(std::ffi::OsStr::from_bytes(b"DCIM/Caf\xe9"));
    old(&dir.join("IMG_0001.JPG"), b"1");
    old(
        &dir.join(std::ffi::OsStr::from_bytes(b"\xc9t\xe9.JPG")),
        b"22",
    );
    let store = Store::open(state.path()).unwrap();
    let rep = scan(
        CardRoot::at(card.path()),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!((rep.queued, rep.unreadable), (2, 0));
    let queued = paths(&store, ItemState::Pending);
    assert_eq!(
        queued,
        [
            "DCIM/Caf\\xE9/IMG_0001.JPG",
            "DCIM/Caf\\xE9/\\xC9t\\xE9.JPG"
        ]
    );
    // The storage path leads back to the very file.
    for it in store.list(None, 10, 0).unwrap() {
        assert!(
            it.storage_path.on_disk(card.path()).is_file(),
            "{}",
            it.storage_path
        );
    }
}

/// Sends every pending item as the uploader does: its fingerprint noted, then done.
fn send_all(store: &Store, root: &Path) -> usize {
    let items = store.list(Some(ItemState::Pending), 1000, 0).unwrap();
    for it in &items {
        assert!(store.mark_uploading(it.id).unwrap());
        let fp = Fingerprint::of_path(&it.storage_path.on_disk(root), it.size)
            .unwrap()
            .unwrap();
        store.set_fingerprint(it.id, &fp).unwrap();
        store.mark_done(it.id).unwrap();
    }
    items.len()
}

/// The 1980 floor of FAT and exFAT, where a camera without a clock stamps its files.
fn floor() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(315_532_800)
}

fn write_at(path: &Path, bytes: &[u8], t: SystemTime) {
    old(path, bytes);
    set_mtime(path, t);
}

#[test]
fn the_same_bytes_under_another_stamp_are_not_queued_again() {
    // A FAT card mounted with another time zone, or read on another device: every mtime
    // moves by hours, the bytes do not.
    for card in [Some("1234-ABCD"), None] {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let r = dir.path();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        old(&r.join("DCIM/A.JPG"), b"small photo");
        old(&r.join("DCIM/B.MP4"), &big);
        let store = Store::open(state.path()).unwrap();
        let scan_now = || scan_with(r, &store, card);
        assert_eq!(scan_now().queued, 2);
        assert_eq!(send_all(&store, r), 2);
        for f in ["DCIM/A.JPG", "DCIM/B.MP4"] {
            let m = std::fs::metadata(r.join(f)).unwrap().modified().unwrap();
            set_mtime(&r.join(f), m + Duration::from_secs(3 * 3600));
        }
        let rep = scan_now();
        assert_eq!((rep.queued, rep.dropped), (0, 0), "card {card:?}");
        assert!(paths(&store, ItemState::Pending).is_empty());
        // The done items follow the bytes: the next scan knows them without a read.
        let rep = scan_now();
        assert_eq!((rep.queued, rep.dropped), (0, 0));
        assert_eq!(store.counts().unwrap().done, 2);
    }
}

#[test]
fn a_reformatted_card_reusing_names_sizes_and_floor_stamps_has_all_its_files_queued() {
    // With the serials read (the reformat gave the card a new one), and without.
    for (first, second) in [(Some("1111-1111"), Some("2222-2222")), (None, None)] {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let r = dir.path();
        let names = ["DCIM/100MEDIA/DSC00001.JPG", "DCIM/100MEDIA/DSC00002.JPG"];
        let big = |b: u8| vec![b; 2_000_000];
        for n in names {
            write_at(&r.join(n), &big(1), floor());
        }
        let store = Store::open(state.path()).unwrap();
        scan(
            CardRoot::at(r),
            &filter(),
            &store,
            Duration::from_secs(10),
            first,
        )
        .unwrap();
        assert_eq!(send_all(&store, r), 2);
        // Reformatted, the same shots again: same names, sizes and stamps, other bytes.
        std::fs::remove_dir_all(r.join("DCIM")).unwrap();
        for n in names {
            write_at(&r.join(n), &big(2), floor());
        }
        let rep = scan(
            CardRoot::at(r),
            &filter(),
            &store,
            Duration::from_secs(10),
            second,
        )
        .unwrap();
        assert_eq!(
            rep.queued, 2,
            "every new file queued ({first:?} then {second:?})"
        );
        assert_eq!(paths(&store, ItemState::Pending), names);
        assert_eq!(send_all(&store, r), 2);
        // The history keeps both uploads of each name.
        assert_eq!(store.history(10).unwrap().len(), 4);
        // And nothing more on the next scans.
        let rep = scan(
            CardRoot::at(r),
            &filter(),
            &store,
            Duration::from_secs(10),
            second,
        )
        .unwrap();
        assert_eq!(rep.queued, 0);
        // The first card's bytes put back: sent before, not queued again.
        std::fs::remove_dir_all(r.join("DCIM")).unwrap();
        for n in names {
            write_at(&r.join(n), &big(1), floor());
        }
        let rep = scan(
            CardRoot::at(r),
            &filter(),
            &store,
            Duration::from_secs(10),
            first,
        )
        .unwrap();
        assert_eq!((rep.queued, rep.dropped), (0, 0));
        assert!(paths(&store, ItemState::Pending).is_empty());
    }
}

#[test]
fn an_item_of_a_card_that_is_out_waits_for_it_and_goes_up_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = dir.path();
    let store = Store::open(state.path()).unwrap();
    let scan_on = |card| {
        scan(
            CardRoot::at(r),
            &filter(),
            &store,
            Duration::from_secs(10),
            Some(card),
        )
    };
    old(&r.join("DCIM/GOPR0001.JPG"), b"card A's first");
    old(&r.join("DCIM/GOPR0002.JPG"), b"card A's second");
    scan_on("AAAA-AAAA").unwrap();
    let stamps = ["DCIM/GOPR0001.JPG", "DCIM/GOPR0002.JPG"]
        .map(|n| std::fs::metadata(r.join(n)).unwrap().modified().unwrap());
    // Card B: reuses the first name, lacks the second.
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/GOPR0001.JPG"), b"card B's first photo");
    scan_on("BBBB-BBBB").unwrap();
    let skipped = store.list(Some(ItemState::Skipped), 10, 0).unwrap();
    let reasons: Vec<_> = skipped.iter().map(|i| i.last_error.as_deref()).collect();
    assert_eq!(
        reasons,
        [Some(store::REASON_WAITING_FOR_CARD); 2],
        "neither replaced nor deleted"
    );
    assert_eq!(
        store.waiting_for_card().unwrap(),
        [(Some("AAAA-AAAA".to_string()), 2, 29)]
    );
    assert_eq!(paths(&store, ItemState::Pending), ["DCIM/GOPR0001.JPG"]);
    // Card A back (its files with their stamps): both wait no more; card B's file waits
    // for card B.
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/GOPR0001.JPG"), b"card A's first");
    old(&r.join("DCIM/GOPR0002.JPG"), b"card A's second");
    for (n, t) in ["DCIM/GOPR0001.JPG", "DCIM/GOPR0002.JPG"]
        .iter()
        .zip(stamps)
    {
        set_mtime(&r.join(n), t);
    }
    let rep = scan_on("AAAA-AAAA").unwrap();
    assert_eq!(rep.queued, 2);
    let waiting = store.waiting_for_card().unwrap();
    assert_eq!(waiting, [(Some("BBBB-BBBB".to_string()), 1, 20)]);
}

#[test]
fn a_scan_of_many_files_in_many_directories_queues_each_once() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    for d in 0..10 {
        for f in 0..500 {
            old(&card.path().join(format!("DCIM/{d:03}/F{f:04}.JPG")), b"");
        }
    }
    let store = Store::open(state.path()).unwrap();
    let rep = scan(
        CardRoot::at(card.path()),
        &filter(),
        &store,
        Duration::from_secs(10),
        None,
    )
    .unwrap();
    assert_eq!(rep.queued, 5000);
    assert_eq!(
        store
            .list(Some(ItemState::Pending), 10_000, 0)
            .unwrap()
            .len(),
        5000
    );
}

#[test]
fn a_rescan_reads_each_directorys_items_and_finds_new_versions_at_every_depth() {
    // What the queue holds is read per directory (issue 29): files in the root, in a folder
    // of folders, in a camera folder and below it are each known where they are, and a new
    // version of each is queued and its open older one replaced, not both kept.
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    let names = [
        "A.JPG",
        "DCIM/100ABCDE/C.JPG",
        "DCIM/100ABCDE/SUB/D.JPG",
        "DCIM/B.JPG",
        "DCIM/100ABCDE-/E.JPG",
    ];
    for n in names {
        old(&r.join(n), n.as_bytes());
    }
    let store = Store::open(state.path()).unwrap();
    let scan_now = || scan_with(r, &store, None);
    assert_eq!(scan_now().queued, 5);
    assert_eq!(scan_now().queued, 0, "all known while pending");
    assert_eq!(send_all(&store, r), 5);
    assert_eq!(scan_now().queued, 0, "all known once sent");
    // A new version of a sent file at each depth but one; and one of an open one.
    for n in &names[..4] {
        old(&r.join(n), b"version two");
    }
    let rep = scan_now();
    assert_eq!(rep.queued, 4);
    assert_eq!(paths(&store, ItemState::Pending), names[..4]);
    old(&r.join("DCIM/100ABCDE/SUB/D.JPG"), b"version three");
    let rep = scan_now();
    assert_eq!((rep.queued, rep.dropped), (1, 0), "replaced on insert");
    assert_eq!(paths(&store, ItemState::Pending), names[..4]);
    assert_eq!(paths(&store, ItemState::Done).len(), 5);
    assert_eq!(scan_now().queued, 0);
}

/// The skipped items' paths with their reasons, in path order.
fn dropped(store: &Store) -> Vec<(String, String)> {
    let mut v: Vec<_> = store
        .list(Some(ItemState::Skipped), 1000, 0)
        .unwrap()
        .into_iter()
        .map(|i| {
            let why = i.last_error.unwrap_or_default();
            (i.storage_path.as_str().to_string(), why)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn open_items_are_judged_in_their_directory_and_where_the_walk_found_no_media_file() {
    // A scan judges a directory's open items once it has read it (issue 29), and the ones in
    // directories it found no media file in after the walk: a folder removed whole, a folder
    // left with only a note, a root whose loose file went, a folder whose only file is being
    // rewritten. Each open item is judged once, with the reason a user would read; the files
    // still there (in the root, in a folder whose name is not UTF-8) stay queued while the
    // items of the folders judged after the walk are dropped.
    use std::os::unix::ffi::OsStrExt;
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    old(
        &r.join(std::ffi::OsStr::from_bytes(b"DCIM/Caf\xe9/K.JPG")),
        b"kept",
    );
    for n in [
        "KEEP.JPG",
        "ROOT.JPG",
        "DCIM/100AAAAA/A.JPG",
        "DCIM/100AAAAA/B.JPG",
        "DCIM/101BBBBB/C.JPG",
        "DCIM/102CCCCC/D.JPG",
        "DCIM/103DDDDD/F.JPG",
    ] {
        old(&r.join(n), n.as_bytes());
    }
    let store = Store::open(state.path()).unwrap();
    assert_eq!(scan_with(r, &store, None).queued, 8);

    std::fs::remove_file(r.join("DCIM/100AAAAA/A.JPG")).unwrap();
    std::fs::remove_dir_all(r.join("DCIM/101BBBBB")).unwrap();
    std::fs::remove_file(r.join("DCIM/102CCCCC/D.JPG")).unwrap();
    std::fs::write(r.join("DCIM/102CCCCC/NOTES.TXT"), b"not media").unwrap();
    std::fs::remove_file(r.join("ROOT.JPG")).unwrap();
    std::fs::write(r.join("DCIM/103DDDDD/F.JPG"), b"being rewritten").unwrap();
    let rep = scan_with(r, &store, None);
    assert_eq!((rep.queued, rep.dropped, rep.recent.len()), (0, 5, 1));
    let (deleted, replaced) = (store::REASON_DELETED, store::REASON_REPLACED);
    let want: Vec<(String, String)> = [
        ("DCIM/100AAAAA/A.JPG", deleted),
        ("DCIM/101BBBBB/C.JPG", deleted),
        ("DCIM/102CCCCC/D.JPG", deleted),
        ("DCIM/103DDDDD/F.JPG", replaced),
        ("ROOT.JPG", deleted),
    ]
    .map(|(p, why)| (p.to_string(), why.to_string()))
    .into();
    assert_eq!(dropped(&store), want);
    let kept = ["DCIM/100AAAAA/B.JPG", "DCIM/Caf\\xE9/K.JPG", "KEEP.JPG"];
    assert_eq!(paths(&store, ItemState::Pending), kept);
    // A second scan drops nothing more, and the kept ones stay.
    assert_eq!(scan_with(r, &store, None).dropped, 0);
    assert_eq!(paths(&store, ItemState::Pending), kept);
}

#[test]
fn an_open_item_in_a_folder_gone_with_its_card_waits_for_the_card() {
    // Card B in the slot lacks card A's folder altogether: card A's open item there is
    // judged after the walk, and waits for its card rather than counting as deleted.
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    old(&r.join("DCIM/100AAAAA/A.JPG"), b"card A's");
    let store = Store::open(state.path()).unwrap();
    scan_with(r, &store, Some("AAAA-AAAA"));
    std::fs::remove_dir_all(r.join("DCIM")).unwrap();
    old(&r.join("DCIM/100BBBBB/B.JPG"), b"card B's");
    let rep = scan_with(r, &store, Some("BBBB-BBBB"));
    assert_eq!((rep.queued, rep.dropped), (1, 1));
    assert_eq!(
        dropped(&store),
        [(
            "DCIM/100AAAAA/A.JPG".to_string(),
            store::REASON_WAITING_FOR_CARD.to_string()
        )]
    );
}

#[test]
fn the_snapshots_ids_are_kept_as_bits_and_as_a_list_where_sparse() {
    let ids = |span, count, ids: &[i64]| {
        let mut set = IdSet::for_span(span, count);
        for &id in ids {
            set.insert(id);
        }
        set.finish();
        set
    };
    // Dense, in any order (the state index's), with a repeat, and one id opened after the
    // span was read (1100, past the last word): bits, and that one in the list.
    let dense = [130_i64, 64, 65, 5, 1000, 64, 7, 1100, -3];
    let set = ids(Some((-3, 1000)), 8, &dense);
    assert_eq!((set.bits.len(), set.list.as_slice()), (17, &[1100][..]));
    assert_eq!(set.len(), 8, "64 is in once");
    for id in dense {
        assert!(set.contains(id), "{id}");
    }
    for id in [
        -4,
        -2,
        0,
        4,
        6,
        63,
        66,
        129,
        131,
        999,
        1002,
        1_000_000,
        i64::MIN,
    ] {
        assert!(!set.contains(id), "{id}");
    }
    // Far apart (a span over a thousand words more than the ids): a sorted list.
    let sparse = [10_i64, 3, 10, i64::MAX - 1, 1 << 40, i64::MIN];
    let set = ids(Some((i64::MIN, i64::MAX - 1)), 6, &sparse);
    assert!(set.bits.is_empty(), "sparse ids are a list");
    assert_eq!(set.len(), 5);
    for id in sparse {
        assert!(set.contains(id), "{id}");
    }
    for id in [0, 4, 11, i64::MAX, (1 << 40) + 1, i64::MIN + 1] {
        assert!(!set.contains(id), "{id}");
    }
    // Bits with a base far below zero: no overflow at the top of the range.
    let set = ids(
        Some((i64::MIN, i64::MIN + 100)),
        2,
        &[i64::MIN, i64::MIN + 100],
    );
    assert_eq!(set.bits.len(), 2);
    assert!(set.contains(i64::MIN + 100) && !set.contains(i64::MAX));
    // Nothing open: nothing in.
    assert_eq!(ids(None, 0, &[]).len(), 0);
}

#[test]
fn the_span_of_the_open_ids_is_read_from_every_open_state() {
    let card = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let r = card.path();
    let store = Store::open(state.path()).unwrap();
    assert_eq!(store.open_id_span().unwrap(), (None, 0));
    for n in ["A.JPG", "B.JPG", "C.JPG", "D.JPG"] {
        old(&r.join(n), n.as_bytes());
    }
    scan_with(r, &store, None);
    let mut ids: Vec<i64> = store
        .list(Some(ItemState::Pending), 10, 0)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    let (lo, hi) = (ids[0], ids[3]);
    assert_eq!(store.open_id_span().unwrap(), (Some((lo, hi)), 4));
    // The lowest failed, the highest dropped: the span is the open ones', failed included.
    store.mark_failed(lo, "no").unwrap();
    store
        .mark_skipped_many(&[hi], store::REASON_DELETED)
        .unwrap();
    assert_eq!(store.open_id_span().unwrap(), (Some((lo, ids[2])), 3));
}
