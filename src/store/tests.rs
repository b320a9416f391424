use super::*;

fn found(path: &str, size: u64, mtime_ns: i64) -> FoundFile {
    FoundFile {
        path: StoragePath::from_relative(Path::new(path)).unwrap(),
        kind: Kind::Photo,
        size,
        mtime_ns,
    }
}

fn all_kinds_pick(now: i64) -> Pick<'static> {
    Pick {
        now,
        auto_kinds: &[Kind::Photo, Kind::Video],
        allow_auto: true,
        allow_manual: true,
        exclude: &[],
    }
}

#[test]
fn same_file_is_queued_once_and_a_done_file_never_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.upsert_files(&[found("DCIM/A.JPG", 10, 1)]).unwrap(), 1);
    assert_eq!(s.upsert_files(&[found("DCIM/A.JPG", 10, 1)]).unwrap(), 0);
    let item = s.next_item(&all_kinds_pick(now_unix())).unwrap().unwrap();
    assert!(s.mark_uploading(item.id).unwrap());
    s.mark_done(item.id).unwrap();
    assert_eq!(s.upsert_files(&[found("DCIM/A.JPG", 10, 1)]).unwrap(), 0);
    assert_eq!(s.counts().unwrap().done, 1);
    assert_eq!(s.history(10).unwrap().len(), 1);
}

#[test]
fn a_new_version_replaces_the_queued_one_and_requeues_a_done_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap();
    s.upsert_files(&[found("A.JPG", 20, 2)]).unwrap();
    let items = s.list(None, 10, 0).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].state, ItemState::Skipped);
    assert_eq!(items[0].last_error.as_deref(), Some(REASON_REPLACED));
    assert_eq!(items[1].state, ItemState::Pending);
    assert!(s.mark_uploading(items[1].id).unwrap());
    s.mark_done(items[1].id).unwrap();
    assert_eq!(s.upsert_files(&[found("A.JPG", 30, 3)]).unwrap(), 1);
    assert_eq!(s.counts().unwrap().pending, 1);
}

#[test]
fn a_file_thought_deleted_that_comes_back_is_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap();
    let id = s.list(None, 1, 0).unwrap()[0].id;
    s.mark_skipped(id, REASON_DELETED).unwrap();
    assert_eq!(s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap(), 1);
    assert_eq!(s.item(id).unwrap().unwrap().state, ItemState::Pending);
}

#[test]
fn manual_first_then_oldest_capture_first_and_back_off_respected() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[
        found("new.jpg", 1, 300),
        found("old.jpg", 1, 100),
        found("mid.jpg", 1, 200),
    ])
    .unwrap();
    let now = now_unix();
    let first = s.next_item(&all_kinds_pick(now)).unwrap().unwrap();
    assert_eq!(first.storage_path.as_str(), "old.jpg");
    s.mark_retry(first.id, "boom", now + 100).unwrap();
    let second = s.next_item(&all_kinds_pick(now)).unwrap().unwrap();
    assert_eq!(second.storage_path.as_str(), "mid.jpg");
    assert_eq!(s.next_due(&all_kinds_pick(now)).unwrap(), Some(0));
    s.enqueue_manual(&found("new.jpg", 1, 300)).unwrap();
    let manual = s.next_item(&all_kinds_pick(now)).unwrap().unwrap();
    assert_eq!(manual.storage_path.as_str(), "new.jpg");
    let only_manual = Pick {
        allow_auto: false,
        ..all_kinds_pick(now)
    };
    assert_eq!(
        s.next_item(&only_manual)
            .unwrap()
            .unwrap()
            .storage_path
            .as_str(),
        "new.jpg"
    );
    let nothing = Pick {
        allow_auto: false,
        allow_manual: false,
        ..all_kinds_pick(now)
    };
    assert!(s.next_item(&nothing).unwrap().is_none());
}

#[test]
fn settings_and_pause_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Settings::default();
    {
        let s = Store::open(dir.path()).unwrap();
        let mut mine = defaults.clone();
        mine.auto_upload = true;
        s.save_settings(&mine).unwrap();
        s.set_paused(true).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(s.settings(&defaults).unwrap().auto_upload);
    assert!(s.paused().unwrap());
}

#[test]
fn interrupted_upload_resumes_with_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap();
    let id = s.list(None, 1, 0).unwrap()[0].id;
    s.mark_uploading(id).unwrap();
    s.set_upload_url(
        id,
        "http://127.0.0.1/files/abc",
        None,
        "http://127.0.0.1/files/",
    )
    .unwrap();
    s.set_progress(id, 40, None).unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.recover_interrupted().unwrap(), 1);
    let item = s.item(id).unwrap().unwrap();
    assert_eq!(item.state, ItemState::Pending);
    assert_eq!(
        item.upload_url.as_deref(),
        Some("http://127.0.0.1/files/abc")
    );
    assert_eq!(item.bytes_sent, 40);
    assert_eq!(item.creations, 1);
}

#[test]
fn corrupt_database_is_moved_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.counts().unwrap(), QueueCounts::default());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
}

#[test]
fn files_are_private_to_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _s = Store::open(&state).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(DB_FILE)), 0o600);
}

#[test]
fn an_item_cancelled_while_picked_is_neither_started_nor_recorded_done() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.JPG", 10, 1), found("B.JPG", 10, 1)])
        .unwrap();
    let items = s.list(None, 10, 0).unwrap();
    // Cancelled between the pick and the start: not started.
    s.cancel(items[0].id).unwrap();
    assert!(!s.mark_uploading(items[0].id).unwrap());
    // Cancelled while uploading: the transfer's "done" does not overwrite it.
    assert!(s.mark_uploading(items[1].id).unwrap());
    s.cancel(items[1].id).unwrap();
    s.mark_done(items[1].id).unwrap();
    assert_eq!(
        s.item(items[1].id).unwrap().unwrap().state,
        ItemState::Cancelled
    );
    assert!(s.history(10).unwrap().is_empty());
}
