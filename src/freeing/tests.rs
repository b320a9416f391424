use sha1::Digest as _;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use super::at_dir::Seen;
use super::confirm::{read_back_file, summary_of};
use super::delete::delete_file;
use super::settle::settle;
use super::*;
use crate::space::ReadBack;
use crate::store::{SentChunk, Store};

#[test]
fn statvfs_reads_a_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let c = card_space(dir.path()).unwrap();
    assert!(c.total_bytes > 0 && c.free_bytes <= c.total_bytes, "{c:?}");
    assert!(card_space(&dir.path().join("missing")).is_err());
}

#[test]
fn read_back_compares_each_chunk_with_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("A.JPG");
    std::fs::write(&path, b"hello world").unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let never = AtomicBool::new(false);
    let chunk = |start: u64, bytes: &[u8]| SentChunk {
        start,
        len: bytes.len() as u64,
        sha1: sha1::Sha1::digest(bytes).into(),
        checksum: false,
        ino,
    };
    let good = [chunk(0, b"hello"), chunk(5, b" world")];
    assert_eq!(
        read_back_file(&path, &good, None, &never),
        ReadBack::Same { ino }
    );
    let bad = [chunk(0, b"hello"), chunk(5, b" WORLD")];
    assert_eq!(
        read_back_file(&path, &bad, None, &never),
        ReadBack::Differs { at: 5 }
    );
    let longer = [chunk(0, b"hello"), chunk(5, b" world!")];
    assert_eq!(
        read_back_file(&path, &longer, None, &never),
        ReadBack::Differs { at: 5 }
    );
    // The same bytes on another inode (a FAT remount) read back the same, and say which
    // inode was read.
    let copy = dir.path().join("A.new");
    std::fs::write(&copy, b"hello world").unwrap();
    std::fs::rename(&copy, &path).unwrap();
    let new_ino = std::fs::metadata(&path).unwrap().ino();
    assert_ne!(new_ino, ino);
    assert_eq!(
        read_back_file(&path, &good, None, &never),
        ReadBack::Same { ino: new_ino }
    );
    assert!(matches!(
        read_back_file(&dir.path().join("gone"), &good, None, &never),
        ReadBack::Failed(_)
    ));
    // Under `receipt`: the whole file against the camera's SHA-256, no chunk records.
    let want: [u8; 32] = sha2::Sha256::digest(b"hello world").into();
    assert_eq!(
        read_back_file(&path, &[], Some(want), &never),
        ReadBack::Same { ino: new_ino }
    );
    let other: [u8; 32] = sha2::Sha256::digest(b"hello world!").into();
    assert_eq!(
        read_back_file(&path, &[], Some(other), &never),
        ReadBack::Differs { at: 0 }
    );
}

/// What a last look at `path` sees.
fn seen_of(path: &Path) -> Seen {
    let m = std::fs::symlink_metadata(path).unwrap();
    Seen {
        ino: m.ino(),
        size: m.len(),
        mtime_ns: crate::media::mtime_ns(&m),
    }
}

#[test]
fn a_failing_delete_command_keeps_the_file_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = root.join("A.JPG");
    std::fs::write(&path, b"x").unwrap();
    let ino = seen_of(&path);
    let err = delete_file(
        root,
        &path,
        ino,
        Some(Path::new("/bin/false")),
        &CancellationToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/bin/false failed"), "{err}");
    assert!(path.exists());
    let err = delete_file(
        root,
        &path,
        ino,
        Some(Path::new("/bin/true")),
        &CancellationToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("still there"), "{err}");
    delete_file(
        root,
        &path,
        ino,
        Some(Path::new("/bin/rm")),
        &CancellationToken::new(),
    )
    .unwrap();
    assert!(!path.exists());
}

#[test]
fn a_command_that_deleted_the_file_then_failed_or_was_stopped_has_freed_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cmd = root.join("delete.sh");
    std::fs::write(
        &cmd,
        "#!/bin/sh\nrm -- \"$1\"\necho 'index not updated' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&cmd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = root.join("A.JPG");
    std::fs::write(&path, b"x").unwrap();
    delete_file(
        root,
        &path,
        seen_of(&path),
        Some(&cmd),
        &CancellationToken::new(),
    )
    .unwrap();
    assert!(!path.exists());
    // Deleted, then hung until freeing was stopped: freed all the same.
    std::fs::write(&cmd, "#!/bin/sh\nrm -- \"$1\"\nexec sleep 600\n").unwrap();
    std::fs::write(&path, b"x").unwrap();
    let stop = CancellationToken::new();
    let (p, s) = (path.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        while p.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        s.cancel();
    });
    delete_file(root, &path, seen_of(&path), Some(&cmd), &stop).unwrap();
    t.join().unwrap();
    // Refused and still there: kept, and the command's words say why.
    std::fs::write(&cmd, "#!/bin/sh\necho 'file locked' >&2\nexit 3\n").unwrap();
    std::fs::write(&path, b"x").unwrap();
    let err = delete_file(
        root,
        &path,
        seen_of(&path),
        Some(&cmd),
        &CancellationToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with("failed (exit status: 3): file locked"),
        "{err}"
    );
    assert!(path.exists());
    // Failed, and the file is there under a new inode with its size and mtime (as after
    // a FAT or exFAT remount, which renumbers inodes): kept, not recorded as freed.
    std::fs::write(
        &cmd,
        "#!/bin/sh\ncp -p -- \"$1\" \"$1.t\" && mv -- \"$1.t\" \"$1\"\nexit 3\n",
    )
    .unwrap();
    let seen = seen_of(&path);
    let err = delete_file(root, &path, seen, Some(&cmd), &CancellationToken::new());
    assert!(err.is_err(), "recorded as freed, yet it is on the card");
    let now = seen_of(&path);
    assert_ne!(now.ino, seen.ino, "the test needs a new inode");
    assert!(now.same_version(&seen));
}

#[test]
fn only_the_file_the_rules_saw_is_deleted_never_one_put_in_its_place_or_behind_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("card");
    let sub = root.join("DCIM/100MEDIA");
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("A.JPG");
    std::fs::write(&path, b"seen").unwrap();
    let seen = seen_of(&path);
    // Another file took the name after the last look: kept, with and without a command.
    let other = sub.join("B.tmp");
    std::fs::write(&other, b"new").unwrap();
    std::fs::rename(&other, &path).unwrap();
    let err = delete_file(&root, &path, seen, None, &CancellationToken::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another file"), "{err}");
    let err = delete_file(
        &root,
        &path,
        seen,
        Some(Path::new("/bin/rm")),
        &CancellationToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("another file"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    // The same inode rewritten in place after the last look: kept too.
    let seen = seen_of(&path);
    std::fs::write(&path, b"rewritten").unwrap();
    assert_eq!(seen_of(&path).ino, seen.ino);
    let err = delete_file(&root, &path, seen, None, &CancellationToken::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another file"), "{err}");
    // A directory on the way swapped for a link to another one with the same name in it.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("A.JPG"), b"not on the card").unwrap();
    let ino = seen_of(&elsewhere.join("A.JPG"));
    std::fs::rename(&sub, root.join("DCIM/moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
    assert!(delete_file(&root, &path, ino, None, &CancellationToken::new()).is_err());
    assert!(elsewhere.join("A.JPG").exists());
    // The file the rules saw goes.
    std::fs::remove_file(&sub).unwrap();
    std::fs::rename(root.join("DCIM/moved"), &sub).unwrap();
    let now = seen_of(&path);
    delete_file(&root, &path, now, None, &CancellationToken::new()).unwrap();
    assert!(!path.exists());
    assert!(
        delete_file(&root, &path, now, None, &CancellationToken::new())
            .unwrap_err()
            .to_string()
            .contains("gone already")
    );
}

#[test]
fn a_deletion_cut_before_its_record_is_recorded_at_the_next_pass_and_one_that_did_not_happen_is_forgotten(
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("card");
    std::fs::create_dir_all(root.join("DCIM")).unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let mut ids = Vec::new();
    for name in ["DCIM/A.JPG", "DCIM/B.JPG", "DCIM/C.JPG", "DCIM/D.JPG"] {
        std::fs::write(root.join(name), name).unwrap();
        let m = std::fs::metadata(root.join(name)).unwrap();
        let f = crate::store::FoundFile {
            path: crate::media::StoragePath::from_stored(name.into()),
            kind: crate::media::Kind::Photo,
            size: m.len(),
            mtime_ns: crate::media::mtime_ns(&m),
        };
        store.upsert_files(&[f]).unwrap();
        let id = store.max_item_id().unwrap();
        assert!(store.mark_uploading(id).unwrap());
        store
            .set_upload_url(
                id,
                "http://127.0.0.1:1/files/a",
                None,
                "http://127.0.0.1:1/files/",
            )
            .unwrap();
        store.mark_done(id).unwrap();
        store.note_freeing(id, m.ino()).unwrap();
        ids.push(id);
    }
    // A was deleted and the power went before its record; B's name holds another file
    // now (deleted, then the camera reused the name); C was never deleted; D was never
    // deleted either, but the reboot's remount of a FAT card gave it another inode number.
    std::fs::remove_file(root.join("DCIM/A.JPG")).unwrap();
    std::fs::write(root.join("DCIM/B.new"), "another").unwrap();
    std::fs::rename(root.join("DCIM/B.new"), root.join("DCIM/B.JPG")).unwrap();
    let d = root.join("DCIM/D.JPG");
    let mtime = std::fs::metadata(&d).unwrap().modified().unwrap();
    std::fs::copy(&d, root.join("DCIM/D.new")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(root.join("DCIM/D.new"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(root.join("DCIM/D.new"), &d).unwrap();
    let notes = store.freeing_notes().unwrap();
    assert_eq!(notes.len(), 4);
    assert!(notes
        .iter()
        .any(|&(id, ino)| id == ids[3] && ino != seen_of(&d).ino));
    // With the card pulled (its directories gone), nothing is decided.
    std::fs::rename(root.join("DCIM"), dir.path().join("out")).unwrap();
    assert!(settle(&store, &root, &notes).unwrap().is_empty());
    assert_eq!(store.freeing_notes().unwrap().len(), 4);
    std::fs::rename(dir.path().join("out"), root.join("DCIM")).unwrap();
    let freed = settle(&store, &root, &notes).unwrap();
    let freed: Vec<i64> = freed.iter().map(|(i, _)| i.id).collect();
    assert_eq!(freed, ids[..2]);
    let recorded: Vec<i64> = store.freed(10).unwrap().iter().map(|(i, _)| i.id).collect();
    assert_eq!(recorded.len(), 2);
    assert!(!recorded.contains(&ids[2]) && !recorded.contains(&ids[3]));
    assert!(
        store.freeing_notes().unwrap().is_empty(),
        "every note settled"
    );
    assert!(root.join("DCIM/C.JPG").exists() && d.exists());
}

#[test]
fn the_chunks_read_back_against_add_up_as_the_store_summed_them_and_none_never_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let f = crate::store::FoundFile {
        path: crate::media::StoragePath::from_stored("DCIM/A.JPG".into()),
        kind: crate::media::Kind::Photo,
        size: 30,
        mtime_ns: 1,
    };
    store.upsert_files(&[f]).unwrap();
    let id = store.max_item_id().unwrap();
    assert!(store.mark_uploading(id).unwrap());
    store
        .set_upload_url(
            id,
            "http://127.0.0.1:1/files/a",
            None,
            "http://127.0.0.1:1/files/",
        )
        .unwrap();
    for (start, checksum, ino) in [(0, true, 7), (10, false, 7), (20, true, 8)] {
        let c = SentChunk {
            start,
            len: 10,
            sha1: [1; 20],
            checksum,
            ino,
        };
        store.record_sent_chunk(id, &c).unwrap();
    }
    store.mark_done(id).unwrap();
    let gathered = store.free_candidates().unwrap().remove(0).sent;
    assert_eq!(summary_of(&store.sent_chunks(id).unwrap()), gathered);
    // Queued again as a new version: the record goes, and nothing read back against it
    // passes for the record the pass judged.
    assert_ne!(summary_of(&[]), gathered);
}

/// An app on a card in `dir` whose maker frees space below 95 % (low on most disks), files kept a
/// day, with `files` (name, size, age in days, what was sent of it) backed up and on the card.
fn app_with_backed_up(dir: &Path, files: &[(&str, usize, u64, bool)]) -> (Arc<App>, Vec<i64>) {
    let root = dir.join("card");
    std::fs::create_dir_all(root.join("DCIM")).unwrap();
    let text = format!(
        r#"
[device]
type = "Test Cam"
serial = "SN-TEST-1"
[media]
root = "{root}"
free_space_below_percent = 95
keep_days = 1
[cloud]
endpoint = "http://127.0.0.1:9/files/"
[control]
socket = "{socket}"
[state]
dir = "{state}"
"#,
        root = root.display(),
        socket = dir.join("run/control.sock").display(),
        state = dir.join("state").display(),
    );
    let config = crate::config::parse(&text, Path::new("test.toml")).unwrap();
    let store = Store::open(&config.state.dir).unwrap();
    let mut ids = Vec::new();
    for &(name, size, days, sent) in files {
        let path = root.join("DCIM").join(name);
        std::fs::write(&path, vec![b'x'; size]).unwrap();
        let t = std::time::SystemTime::now() - Duration::from_secs(days * 86_400 + 3_600);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let f = crate::store::FoundFile {
            path: crate::media::StoragePath::from_stored(format!("DCIM/{name}")),
            kind: crate::media::Kind::Photo,
            size: size as u64,
            mtime_ns: crate::media::mtime_ns(&meta),
        };
        store.upsert_files(&[f]).unwrap();
        let id = store.max_item_id().unwrap();
        assert!(store.mark_uploading(id).unwrap());
        let url = format!("http://127.0.0.1:9/files/{name}");
        store
            .set_upload_url(id, &url, None, "http://127.0.0.1:9/files/")
            .unwrap();
        if sent && size > 0 {
            let chunk = SentChunk {
                start: 0,
                len: size as u64,
                sha1: [0; 20],
                checksum: true,
                ino: meta.ino(),
            };
            store.record_sent_chunk(id, &chunk).unwrap();
        }
        store.mark_done(id).unwrap();
        ids.push(id);
    }
    let tus = crate::upload::tus::Client::new(&config.cloud).unwrap();
    (Arc::new(App::new(config, store, tus).unwrap()), ids)
}

#[test]
fn a_look_over_the_card_pages_and_windows_as_one_decision_over_every_file_would() {
    // Freeing looks at the card's backed-up files a page at a time and a pass confirms a
    // window at a time (issue 29: neither holds every file). Here pages of 2 and windows of 3
    // (the test build's), over files that are freeable, kept for each of several reasons,
    // gone, empty or freed: the preview and the pass's windows name the same files, in the
    // same order, as the rules judging every file at once.
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("A.JPG", 10, 30, true),  // freeable, the oldest
        ("B.JPG", 10, 20, false), // no record of what was sent
        ("C.JPG", 10, 25, true),
        ("D.JPG", 0, 24, true), // empty: never looked at
        ("E.JPG", 10, 23, true),
        ("F.JPG", 10, 0, true), // too young
        ("G.JPG", 10, 22, true),
        ("H.JPG", 10, 21, true), // freed below
        ("I.JPG", 10, 19, true), // gone from the card below
        ("J.JPG", 10, 18, true),
        ("K.JPG", 10, 17, true), // changed on the card below
    ];
    let (app, ids) = app_with_backed_up(dir.path(), &files);
    let id = |n: &str| ids[files.iter().position(|f| f.0 == n).unwrap()];
    app.record_freed(&app.item_if_any(id("H.JPG")).unwrap().unwrap())
        .unwrap();
    let root = &app.config().media.root;
    std::fs::remove_file(root.join("DCIM/H.JPG")).unwrap();
    std::fs::remove_file(root.join("DCIM/I.JPG")).unwrap();
    std::fs::write(root.join("DCIM/K.JPG"), b"another one").unwrap();

    let world = world(&app);
    let mut all = Vec::new();
    gather::for_each_file(&app, None, |_, f| {
        all.push(f);
        true
    })
    .unwrap();
    let d = space::decide(&world, &all);
    let order: Vec<i64> = d.files.iter().map(|(id, _)| *id).collect();
    let want: Vec<i64> = [
        "A.JPG", "C.JPG", "E.JPG", "G.JPG", "B.JPG", "I.JPG", "J.JPG", "K.JPG", "F.JPG",
    ]
    .iter()
    .map(|n| id(n))
    .collect();
    assert_eq!(
        order, want,
        "oldest first; the empty and the freed ones left out"
    );
    let freeable: Vec<i64> = d
        .files
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Free | Verdict::Confirm | Verdict::NotNeeded))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        freeable,
        ["A.JPG", "C.JPG", "E.JPG", "G.JPG", "J.JPG"].map(id)
    );

    // The preview: the same lists and counts as the decision over every file.
    let view = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(preview(&app))
        .unwrap();
    let would: Vec<i64> = view.would_free.iter().map(|f| f.id).collect();
    let decided: Vec<i64> = d
        .files
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Free | Verdict::Confirm))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(would, decided);
    let mut kept = std::collections::BTreeMap::new();
    for (_, v) in &d.files {
        if let Verdict::Keep(k) = v {
            *kept.entry(k.code()).or_insert(0u64) += 1;
        }
    }
    assert_eq!(view.kept_by_reason, kept);
    assert_eq!(
        kept.keys().copied().collect::<Vec<_>>(),
        ["changed", "no_sent_record", "too_young"]
    );
    assert_eq!(
        view.not_needed,
        d.files
            .iter()
            .filter(|(_, v)| *v == Verdict::NotNeeded)
            .count() as u64
    );

    // The preview compares with the rules whether or not this disk is low: what it would
    // free and what is not needed are the freeable files.
    assert_eq!(would.len() as u64 + view.not_needed, freeable.len() as u64);

    // The pass's windows: three, then after them the rest, none twice; the first look counts
    // the kept files as the decision does.
    let first = gather::look(&app, &world, None, true).unwrap();
    let window: Vec<i64> = first.files.iter().map(|(c, _)| c.item.id).collect();
    assert_eq!((window.as_slice(), first.more), (&freeable[..3], true));
    assert_eq!(first.kept, kept);
    assert_eq!(
        first.unverified, 1,
        "no record of what was sent: unverified"
    );
    let second = gather::look(&app, &world, first.next_from(), false).unwrap();
    let window: Vec<i64> = second.files.iter().map(|(c, _)| c.item.id).collect();
    assert_eq!((window.as_slice(), second.more), (&freeable[3..], false));
    assert!(second.kept.is_empty(), "only the first look counts");
    let third = gather::look(&app, &world, second.next_from(), false).unwrap();
    assert!(third.files.is_empty() && !third.more);
}
