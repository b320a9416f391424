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

/// Marks item `id` uploading with a tus upload created at `url` (on `up.example`'s endpoint).
fn started(s: &Store, id: i64, url: &str) {
    assert!(s.mark_uploading(id).unwrap());
    s.set_upload_url(id, url, None, "https://up.example/files/")
        .unwrap();
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
    s.enqueue_manual(&found("new.jpg", 1, 300), None).unwrap();
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
fn an_item_that_keeps_failing_goes_after_one_that_never_failed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("old.jpg", 1, 100)]).unwrap();
    let now = now_unix();
    let old = s.next_item(&all_kinds_pick(now)).unwrap().unwrap();
    assert!(s.mark_uploading(old.id).unwrap());
    // Failed, and due again at once (its back-off drew zero).
    s.mark_retry(old.id, "500 from the server", now).unwrap();
    s.upsert_files(&[found("new.jpg", 1, 300)]).unwrap();
    let next = s.next_item(&all_kinds_pick(now)).unwrap().unwrap();
    assert_eq!(next.storage_path.as_str(), "new.jpg");
    assert_eq!(s.next_backoff_at(now).unwrap(), None);
    s.mark_retry(next.id, "500 from the server", now + 30)
        .unwrap();
    assert_eq!(s.next_backoff_at(now).unwrap(), Some(now + 30));
    assert_eq!(s.last_success_at().unwrap(), None);
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

#[test]
fn two_cards_that_reuse_names_keep_both_files_queued() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let card_a = found("DCIM/100GOPRO/GOPR0001.JPG", 10, 1);
    let card_b = found("DCIM/100GOPRO/GOPR0001.JPG", 20, 2);
    s.upsert_files(std::slice::from_ref(&card_a)).unwrap();
    // Card B in: its file of the same name supersedes A's pending item.
    s.upsert_files(std::slice::from_ref(&card_b)).unwrap();
    // Card A back: its version is queued again (B's stays queued; the scan's reconcile
    // would set it aside until B is back, `scan`'s card swap test shows that).
    assert_eq!(s.upsert_files(std::slice::from_ref(&card_a)).unwrap(), 1);
    assert_eq!(s.upsert_files(std::slice::from_ref(&card_b)).unwrap(), 0);
    let pending: Vec<u64> = s
        .list(Some(ItemState::Pending), 10, 0)
        .unwrap()
        .iter()
        .map(|i| i.size)
        .collect();
    assert_eq!(pending.len(), 2, "both cards' files wait: {pending:?}");
}

#[test]
fn unpairing_or_another_account_drops_the_manual_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.enqueue_manual(&found("A.JPG", 10, 1), None).unwrap();
    s.enqueue_manual(&found("B.JPG", 10, 1), None).unwrap();
    let only_manual = Pick {
        allow_auto: false,
        ..all_kinds_pick(now_unix())
    };
    assert!(s.next_item(&only_manual).unwrap().is_some());
    s.erase_account_data().unwrap();
    assert!(
        s.next_item(&only_manual).unwrap().is_none(),
        "the first user's request does not go up under the next account"
    );
    s.enqueue_manual(&found("A.JPG", 10, 1), None).unwrap();
    s.forget_upload_urls().unwrap();
    assert!(s.next_item(&only_manual).unwrap().is_none());
    assert_eq!(
        s.counts().unwrap().pending,
        2,
        "still queued for automatic upload"
    );
}

#[test]
fn the_writes_that_promise_never_twice_are_synced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let sync =
        |c: &Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    // The durable writes commit at FULL (on the flash when they return), the rest at NORMAL.
    assert_eq!(s.durable(|c| Ok(sync(c))).unwrap(), 2);
    assert_eq!(sync(&s.conn()), 1);
    let journal: String = s
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

#[test]
fn an_item_left_uploading_by_a_failed_write_goes_back_to_pending() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.JPG", 10, 1), found("B.JPG", 10, 1)])
        .unwrap();
    let items = s.list(None, 10, 0).unwrap();
    assert!(s.mark_uploading(items[0].id).unwrap());
    assert!(s.mark_uploading(items[1].id).unwrap());
    // B is still in flight; A's outcome could not be recorded.
    assert_eq!(s.recover_stray_uploading(&[items[1].id]).unwrap(), 1);
    assert_eq!(
        s.item(items[0].id).unwrap().unwrap().state,
        ItemState::Pending
    );
    assert_eq!(
        s.item(items[1].id).unwrap().unwrap().state,
        ItemState::Uploading
    );
    assert_eq!(s.recover_stray_uploading(&[]).unwrap(), 1);
}

/// The item uploaded whole to `url` (its creation recorded, then done).
fn sent_whole(s: &Store, id: i64, url: &str) {
    s.mark_uploading(id).unwrap();
    s.set_upload_url(id, url, None, "https://up.example/files/")
        .unwrap();
    s.mark_done(id).unwrap();
}

/// Breaks the database file the way a bad flash block would.
fn corrupt(dir: &Path) {
    let db = dir.join(DB_FILE);
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::write(&db, vec![0x42u8; len as usize]).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{ext}")));
    }
}

#[test]
fn a_corrupt_database_keeps_what_was_sent_what_is_unfinished_and_the_users_choices() {
    let dir = tempfile::tempdir().unwrap();
    // The maker's default is consent on; the user switched it off.
    let defaults = Settings {
        auto_upload: true,
        ..Settings::default()
    };
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("DONE.JPG", 10, 1), found("HALF.MP4", 100, 2)])
            .unwrap();
        let items = s.list(None, 10, 0).unwrap();
        sent_whole(&s, items[0].id, "https://up.example/files/1");
        s.mark_uploading(items[1].id).unwrap();
        s.set_upload_url(
            items[1].id,
            "https://up.example/files/2",
            None,
            "https://up.example/files/",
        )
        .unwrap();
        s.save_settings(&Settings {
            auto_upload: false,
            ..defaults.clone()
        })
        .unwrap();
        s.set_paused(true).unwrap();
    }
    corrupt(dir.path());
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    // The card's files are found again by the scan: the done one is not queued again.
    assert_eq!(s.upsert_files(&[found("DONE.JPG", 10, 1)]).unwrap(), 0);
    let half = s.list(Some(ItemState::Pending), 10, 0).unwrap();
    assert_eq!(half.len(), 1);
    assert_eq!(half[0].storage_path.as_str(), "HALF.MP4");
    assert_eq!(
        half[0].upload_url.as_deref(),
        Some("https://up.example/files/2"),
        "resumed by asking the server"
    );
    assert_eq!(
        half[0].upload_endpoint.as_deref(),
        Some("https://up.example/files/")
    );
    assert!(
        !s.settings(&defaults).unwrap().auto_upload,
        "the user's 'off' is kept"
    );
    assert!(s.paused().unwrap());
}

#[test]
fn a_database_a_newer_release_wrote_is_set_aside_and_rebuilt_not_misread_after_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("DONE.JPG", 10, 1), found("NEW.JPG", 20, 2)])
            .unwrap();
        let items = s.list(None, 10, 0).unwrap();
        sent_whole(&s, items[0].id, "https://up.example/files/1");
    }
    // The next release migrated it one step further; then the firmware was rolled back.
    let newer = schema::MIGRATIONS.len() as i64 + 1;
    rusqlite::Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    // What was sent stays sent; the rest comes back with the next scan.
    assert_eq!(s.upsert_files(&[found("DONE.JPG", 10, 1)]).unwrap(), 0);
    assert_eq!(s.upsert_files(&[found("NEW.JPG", 20, 2)]).unwrap(), 1);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".newer-"))
        .filter(|p| {
            !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "kept for the newer release");
    let kept: i64 = rusqlite::Connection::open(&aside[0])
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, newer);
}

#[test]
fn a_corrupt_database_without_any_record_of_the_users_choice_means_consent_off() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Settings {
        auto_upload: true,
        ..Settings::default()
    };
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap();
    }
    corrupt(dir.path());
    let s = Store::open(dir.path()).unwrap();
    assert!(!s.settings(&defaults).unwrap().auto_upload);
    // A healthy first start takes the maker's default.
    let fresh = tempfile::tempdir().unwrap();
    assert!(
        Store::open(fresh.path())
            .unwrap()
            .settings(&defaults)
            .unwrap()
            .auto_upload
    );
}

#[test]
fn unpairing_erases_the_upload_urls_from_the_ledger_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap();
    let id = s.list(None, 1, 0).unwrap()[0].id;
    s.set_upload_url(
        id,
        "https://up.example/files/secret-upload-id",
        None,
        "https://up.example/files/",
    )
    .unwrap();
    s.erase_account_data().unwrap();
    let ledger = std::fs::read_to_string(dir.path().join(ledger::LEDGER_FILE)).unwrap();
    assert!(!ledger.contains("secret-upload-id"), "{ledger}");
}

#[test]
fn consent_off_after_a_rebuild_outlives_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Settings {
        auto_upload: true,
        ..Settings::default()
    };
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap();
    }
    // A daemon from before the choices file: no record of the user's choice.
    let _ = std::fs::remove_file(dir.path().join(ledger::CHOICES_FILE));
    corrupt(dir.path());
    {
        let s = Store::open(dir.path()).unwrap();
        s.ensure_choices_saved(&defaults).unwrap();
        assert!(!s.settings(&defaults).unwrap().auto_upload);
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(!s.was_rebuilt());
    assert!(
        !s.settings(&defaults).unwrap().auto_upload,
        "still off at the next start"
    );
}

#[test]
fn a_cancel_outlives_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap();
        let id = s.list(None, 1, 0).unwrap()[0].id;
        started(&s, id, "https://up.example/files/1");
        s.cancel(id).unwrap();
    }
    corrupt(dir.path());
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(
        s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap(),
        0,
        "not queued again"
    );
    assert_eq!(s.counts().unwrap().cancelled, 1);
    assert_eq!(s.counts().unwrap().pending, 0);
}

#[test]
fn a_lost_database_with_a_ledger_is_rebuilt_not_started_afresh() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap();
        let id = s.list(None, 1, 0).unwrap()[0].id;
        started(&s, id, "https://up.example/files/1");
        s.mark_done(id).unwrap();
    }
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("{DB_FILE}{ext}")));
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    assert_eq!(
        s.upsert_files(&[found("A.JPG", 10, 1)]).unwrap(),
        0,
        "A is not sent again"
    );
}

#[test]
fn an_upload_url_from_before_endpoints_were_recorded_resumes_on_the_same_host() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("A.MP4", 100, 1), found("B.MP4", 100, 1)])
        .unwrap();
    let items = s.list(None, 2, 0).unwrap();
    for (it, url) in items
        .iter()
        .zip(["https://up.example/files/1", "https://old.example/files/2"])
    {
        s.conn()
            .execute(
                "UPDATE items SET upload_url = ?2 WHERE id = ?1",
                params![it.id, url],
            )
            .unwrap();
    }
    assert_eq!(
        s.forget_urls_not_for("https://up.example/files/").unwrap(),
        1
    );
    let a = s.item(items[0].id).unwrap().unwrap();
    assert_eq!(
        a.upload_endpoint.as_deref(),
        Some("https://up.example/files/")
    );
    assert_eq!(s.item(items[1].id).unwrap().unwrap().upload_url, None);
}

#[test]
fn the_counts_the_triggers_keep_match_a_count_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let files: Vec<FoundFile> = (0..50)
        .map(|i| found(&format!("F{i}.JPG"), 100 + i, 1))
        .collect();
    s.upsert_files(&files).unwrap();
    let items = s.list(None, 100, 0).unwrap();
    s.mark_uploading(items[0].id).unwrap();
    s.set_progress(items[0].id, 40, None).unwrap();
    s.mark_uploading(items[1].id).unwrap();
    s.mark_done(items[1].id).unwrap();
    s.mark_failed(items[2].id, "413").unwrap();
    s.cancel(items[3].id).unwrap();
    s.upsert_files(&[found("F4.JPG", 999, 2)]).unwrap(); // replaces F4
    let kept = s.counts().unwrap();
    let counted: (i64, i64, i64) = s
        .conn()
        .query_row(
            "SELECT COUNT(*), SUM(CASE WHEN state IN ('pending','uploading','failed') THEN size - bytes_sent ELSE 0 END),
                    SUM(CASE WHEN state = 'done' THEN size ELSE 0 END) FROM items",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let total =
        kept.pending + kept.uploading + kept.done + kept.failed + kept.skipped + kept.cancelled;
    assert_eq!(total as i64, counted.0);
    assert_eq!(kept.bytes_remaining as i64, counted.1);
    assert_eq!(kept.bytes_done as i64, counted.2);
    assert_eq!(
        (
            kept.uploading,
            kept.done,
            kept.failed,
            kept.cancelled,
            kept.skipped
        ),
        (1, 1, 1, 1, 1)
    );
}

#[test]
fn the_cellular_count_adds_up_per_day_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.add_cellular_use(20_000, 0).unwrap(), 0);
        assert_eq!(s.add_cellular_use(20_000, 700).unwrap(), 700);
        assert_eq!(s.add_cellular_use(20_000, 300).unwrap(), 1000);
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.add_cellular_use(20_000, 0).unwrap(), 1000);
    assert_eq!(s.add_cellular_use(20_001, 0).unwrap(), 0, "a new day");
    assert_eq!(s.add_cellular_use(20_001, 5).unwrap(), 5);
}

#[test]
fn the_status_reads_answer_while_a_write_transaction_is_open_and_see_only_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.upsert_files(&[found("DCIM/A.JPG", 10, 1)]).unwrap();
    // A scan's write batch in progress: the writer connection is taken until it commits.
    let seen_during = s
        .tx(|tx| {
            tx.execute(
                "INSERT INTO items (storage_path, kind, size, mtime_ns, queued_at)
                 VALUES ('DCIM/B.JPG', 'photo', 20, 2, 0)",
                [],
            )?;
            count_inserted(tx, ItemState::Pending, 1, 20)?;
            let (back, answer) = std::sync::mpsc::channel();
            let reader = s.clone();
            std::thread::spawn(move || {
                let _ = back.send((
                    reader.counts().unwrap().pending,
                    reader.list(None, 10, 0).unwrap().len(),
                    reader.has_pending().unwrap(),
                ));
            });
            // Through the writer's connection this would wait for the commit below: forever.
            Ok(answer
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("a read waited for the write transaction"))
        })
        .unwrap();
    assert_eq!(
        seen_during,
        (1, 1, true),
        "the uncommitted insert is not seen"
    );
    assert_eq!(s.counts().unwrap().pending, 2, "the committed one is");
    assert_eq!(s.list(None, 10, 0).unwrap().len(), 2);
}

#[test]
fn the_scans_insert_of_new_paths_counts_and_revives_like_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    // More than one statement's worth of rows, and a tail.
    let files: Vec<FoundFile> = (0..INSERT_ROWS * 2 + 3)
        .map(|i| found(&format!("DCIM/{i:04}.JPG"), i as u64, 1))
        .collect();
    assert_eq!(
        s.upsert_with_hint(&files, None, |_| false).unwrap(),
        files.len()
    );
    assert_eq!(s.counts().unwrap().pending, files.len() as u64);
    // Dropped as deleted, then seen again by a scan that (wrongly) thinks the path is new:
    // the insert ignores the row, and the one-by-one path revives it.
    let first = s.list(None, 1, 0).unwrap().remove(0);
    s.mark_skipped(first.id, REASON_DELETED).unwrap();
    let again = [found(
        first.storage_path.as_str(),
        first.size,
        first.mtime_ns,
    )];
    assert_eq!(s.upsert_with_hint(&again, None, |_| false).unwrap(), 1);
    assert_eq!(s.item(first.id).unwrap().unwrap().state, ItemState::Pending);
    assert_eq!(s.counts().unwrap().pending, files.len() as u64);
    assert_eq!(s.upsert_with_hint(&files, None, |_| false).unwrap(), 0);
}

/// `queue_counts` against a fresh count of the queue, state by state (rows the writes left at
/// zero aside).
fn assert_counts_true(s: &Store, after: &str) {
    let rows = |sql: &str| -> Vec<(String, i64, i64, i64)> {
        let conn = s.conn();
        let mut q = conn.prepare(sql).unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    let kept = rows(
        "SELECT state, n, size, sent FROM queue_counts
         WHERE n != 0 OR size != 0 OR sent != 0 ORDER BY state",
    );
    let counted = rows(
        "SELECT state, COUNT(*), SUM(size), SUM(bytes_sent) FROM items
         GROUP BY state ORDER BY state",
    );
    assert_eq!(kept, counted, "after {after}");
}

#[test]
fn the_kept_counts_equal_a_count_of_the_queue_after_every_kind_of_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_counts_true(&s, "open");
    // The scan's statements of many rows, one of which also holds rows the queue already has
    // (ignored by the insert, so not counted), and a tail.
    let files: Vec<FoundFile> = (0..INSERT_ROWS * 2 + 3)
        .map(|i| found(&format!("DCIM/{i:04}.JPG"), 10 + i as u64, 1))
        .collect();
    s.upsert_with_hint(&files[..10], None, |_| false).unwrap();
    assert_counts_true(&s, "a scan's first batch");
    assert_eq!(
        s.upsert_with_hint(&files, None, |_| false).unwrap(),
        files.len() - 10
    );
    assert_counts_true(&s, "a batch holding known rows");
    // One by one: a new version of a queued file (the old one superseded), a manual request
    // for a new file and one for a queued file.
    s.upsert_files(&[found("DCIM/0000.JPG", 999, 2)]).unwrap();
    assert_counts_true(&s, "a new version");
    s.enqueue_manual(&found("DCIM/M.JPG", 77, 3), None).unwrap();
    s.enqueue_manual(&found("DCIM/0001.JPG", 11, 1), None)
        .unwrap();
    assert_counts_true(&s, "manual requests");
    let ids: Vec<i64> = s.list(None, 500, 0).unwrap().iter().map(|i| i.id).collect();
    // Through an upload and every way out of one.
    started(&s, ids[1], "https://up.example/files/1");
    s.set_progress(ids[1], 5, None).unwrap();
    assert_counts_true(&s, "progress");
    s.mark_done(ids[1]).unwrap();
    started(&s, ids[2], "https://up.example/files/2");
    s.mark_retry(ids[2], "503", 0).unwrap();
    started(&s, ids[3], "https://up.example/files/3");
    s.mark_failed(ids[3], "413").unwrap();
    started(&s, ids[4], "https://up.example/files/4");
    s.set_progress(ids[4], 3, None).unwrap();
    s.mark_interrupted(ids[4]).unwrap();
    s.mark_skipped(ids[5], REASON_DELETED).unwrap();
    s.mark_skipped_many(&ids[6..9], REASON_REPLACED).unwrap();
    s.skip_deleted(&found("DCIM/0009.JPG", 19, 1).path).unwrap();
    s.cancel(ids[10]).unwrap();
    s.retry(ids[3]).unwrap();
    assert_counts_true(&s, "uploads' outcomes");
    started(&s, ids[11], "https://up.example/files/11");
    s.recover_stray_uploading(&[]).unwrap();
    started(&s, ids[12], "https://other.example/files/12");
    s.forget_urls_not_for("https://up.example/files/").unwrap();
    assert_eq!(s.recover_interrupted().unwrap(), 1);
    assert_counts_true(&s, "recoveries");
    // A dropped version seen again by a scan that takes its path for new: revived.
    s.upsert_with_hint(&[found("DCIM/0005.JPG", 15, 1)], None, |_| false)
        .unwrap();
    assert_counts_true(&s, "a revival");
    // Freeing space: freed, and a done upload the server lost queued again.
    for (id, n) in [(ids[13], 13), (ids[14], 14)] {
        started(&s, id, &format!("https://up.example/files/{n}"));
        s.set_progress(id, 4, None).unwrap();
        s.mark_done(id).unwrap();
    }
    s.record_sent_chunk(
        ids[15],
        &SentChunk {
            start: 0,
            len: 4,
            sha1: [0; 20],
            checksum: true,
            ino: 1,
        },
    )
    .unwrap();
    s.mark_freed(ids[13], "checksum").unwrap();
    assert!(s.requeue_lost(ids[14]).unwrap());
    assert_counts_true(&s, "freeing space");
    s.purge_history(0).unwrap();
    s.erase_account_data().unwrap();
    assert_counts_true(&s, "unpairing");
    let before = s.counts().unwrap();
    drop(s);
    // Rebuilt from the ledger, after a corruption and after a loss.
    corrupt(dir.path());
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    assert!(s.counts().unwrap().done >= 1, "{before:?}");
    assert_counts_true(&s, "a rebuild of a corrupt database");
    s.upsert_with_hint(&files, None, |_| false).unwrap();
    assert_counts_true(&s, "a scan after the rebuild");
    drop(s);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("{DB_FILE}{ext}")));
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    assert_counts_true(&s, "a rebuild of a lost database");
}

#[test]
fn a_withdrawal_the_disk_had_no_room_for_is_never_undone_by_the_databases_older_copy() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Settings::default();
    let granted = ledger::Choices {
        settings: Settings {
            auto_upload: true,
            network: crate::settings::NetworkPref::Any,
            free_space: crate::settings::FreeSpace::WhenLow,
            ..Settings::default()
        },
        paused: false,
        metered: Some(None),
        metered_networks: Vec::new(),
    };
    {
        let s = Store::open(dir.path()).unwrap();
        s.save_choices(&granted).unwrap();
    }
    // What a withdrawal leaves when not even an overwrite in place fits: an empty file. The
    // database still holds the grant.
    ledger::clear_choices(dir.path()).unwrap();
    let s = Store::open(dir.path()).unwrap();
    let c = s.choices(&defaults).unwrap();
    assert!(
        !c.settings.auto_upload,
        "the database's copy turned consent on"
    );
    assert!(c.paused);
    assert_eq!(c.settings.free_space, crate::settings::FreeSpace::Off);
    assert_eq!(c.settings.network, crate::settings::NetworkPref::Wifi);
    assert_eq!(
        c.metered,
        Some(Some(true)),
        "the Wi-Fi is not taken for metered"
    );
    // A damaged file, or a lost one where there was one, reads the same.
    std::fs::write(
        dir.path().join(ledger::CHOICES_FILE),
        b"{\"settings\":{\"auto_up",
    )
    .unwrap();
    assert!(!s.settings(&defaults).unwrap().auto_upload);
    std::fs::remove_file(dir.path().join(ledger::CHOICES_FILE)).unwrap();
    assert!(!s.settings(&defaults).unwrap().auto_upload);
    assert!(s.paused().unwrap());
    // Saved again once there is room: the record is the withdrawal, not the old grant.
    s.ensure_choices_saved(&defaults).unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert!(!s.settings(&defaults).unwrap().auto_upload);
}

#[test]
fn a_withdrawal_is_written_over_the_choices_file_in_place_when_a_new_file_cannot_be() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.save_choices(&ledger::Choices {
        settings: Settings {
            auto_upload: true,
            ..Settings::default()
        },
        paused: false,
        metered: Some(None),
        metered_networks: Vec::new(),
    })
    .unwrap();
    let off = ledger::Choices {
        settings: Settings::default(),
        paused: true,
        metered: Some(Some(true)),
        metered_networks: Vec::new(),
    };
    ledger::overwrite_choices(dir.path(), &off).unwrap();
    assert_eq!(
        ledger::load_choices(dir.path()),
        ledger::ChoicesFile::Found(off)
    );
}

/// Issue 22, item 2: a power cut (or a full disk) in the middle of an append leaves a line
/// without its newline. The user's cancel appended next must not be glued onto it and lost:
/// after the database is lost and rebuilt, the cancelled file is still cancelled.
#[test]
fn a_torn_ledger_line_does_not_swallow_the_next_fact() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap();
        let id = s.list(None, 1, 0).unwrap()[0].id;
        started(&s, id, "https://up.example/files/1");
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(ledger::LEDGER_FILE))
            .unwrap()
            .write_all(br#"{"p":"B.MP4","s":20,"m":"#)
            .unwrap();
        s.cancel(id).unwrap();
    }
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("{DB_FILE}{ext}")));
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(s.was_rebuilt());
    assert_eq!(
        s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap(),
        0,
        "the cancelled file is not queued again"
    );
    assert_eq!(s.counts().unwrap().cancelled, 1);
    assert_eq!(s.counts().unwrap().pending, 0);
}

/// The same tear found at start is cut off there, before anything reads or appends.
#[test]
fn a_torn_ledger_line_is_cut_off_at_start() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.upsert_files(&[found("A.MP4", 100, 1)]).unwrap();
        let id = s.list(None, 1, 0).unwrap()[0].id;
        started(&s, id, "https://up.example/files/1");
    }
    let path = dir.path().join(ledger::LEDGER_FILE);
    let whole = std::fs::read(&path).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"p":"B.MP4","s":2"#)
        .unwrap();
    drop(Store::open(dir.path()).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), whole);
}

/// Issue 22, item 3: a day's cellular count is kept per day, and no clock or time-zone change
/// gives a fresh budget for bytes already sent.
#[test]
fn the_cellular_count_is_never_forgotten_when_the_day_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let d = 20_000;
    assert_eq!(s.add_cellular_use(d - 1, 100).unwrap(), 100, "yesterday");
    assert_eq!(s.add_cellular_use(d, 1000).unwrap(), 1000);
    // A time-zone change west: back into yesterday, whose own count was smaller. Today's
    // bytes were sent before now: they still count.
    assert_eq!(s.add_cellular_use(d - 1, 0).unwrap(), 1000);
    assert_eq!(s.add_cellular_use(d - 1, 50).unwrap(), 1050);
    // And back east: today has counted what was sent meanwhile too.
    assert_eq!(s.add_cellular_use(d, 0).unwrap(), 1050);
    assert_eq!(s.add_cellular_use(d, 10).unwrap(), 1060);
    // A clock stepped back by two days into a day never counted.
    assert_eq!(s.add_cellular_use(d - 2, 0).unwrap(), 1060);
    // The next day starts afresh, and the count survives a restart.
    assert_eq!(s.add_cellular_use(d + 1, 5).unwrap(), 5);
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.add_cellular_use(d + 1, 0).unwrap(), 5);
    assert_eq!(s.add_cellular_use(d, 0).unwrap(), 1060);

    // A clock a year ahead, then set right: what went out meanwhile counts today, and the
    // days after today are not held back by the year-ahead count.
    assert_eq!(s.add_cellular_use(d + 366, 700).unwrap(), 700);
    assert_eq!(s.add_cellular_use(d + 1, 0).unwrap(), 705);
    assert_eq!(s.add_cellular_use(d + 2, 0).unwrap(), 0);

    // At least the last week is kept.
    let t = d + 100;
    for day in t..t + 40 {
        s.add_cellular_use(day, 1).unwrap();
    }
    let (rows, first): (i64, i64) = s
        .conn()
        .query_row("SELECT COUNT(*), MIN(day) FROM cellular_use", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, first), (32, t + 8));
}

/// A clock a year ahead for a week, then set right: of what the far days counted, only the
/// last one's bytes can have been sent "today"; the week's sum charged to today would block
/// a day that sent nothing like it.
#[test]
fn a_clock_set_right_after_a_week_ahead_carries_over_one_days_count_not_the_weeks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let d = 20_000;
    assert_eq!(s.add_cellular_use(d, 100).unwrap(), 100);
    for day in d + 365..d + 372 {
        assert_eq!(s.add_cellular_use(day, 1000).unwrap(), 1000, "day {day}");
    }
    assert_eq!(s.add_cellular_use(d, 0).unwrap(), 1100);
    assert_eq!(s.add_cellular_use(d, 5).unwrap(), 1105);
    let far: i64 = s
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM cellular_use WHERE day > ?1",
            [d + 2],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        far, 0,
        "the far days no longer hold the days after today back"
    );
}

#[test]
fn the_cellular_count_of_a_release_before_the_per_day_count_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A database as release 6 left it: migrations 7 (this count) to 10 undone.
        let s = Store::open(dir.path()).unwrap();
        s.conn()
            .execute_batch(
                "DROP INDEX items_by_state_id;
                 DROP TABLE cellular_use;
                 DROP TABLE sent_digest;
                 ALTER TABLE history DROP COLUMN sha256;
                 ALTER TABLE history DROP COLUMN freed_on;
                 ALTER TABLE items DROP COLUMN fingerprint;
                 ALTER TABLE items DROP COLUMN card;
                 ALTER TABLE history DROP COLUMN card;
                 DROP TABLE sent_contents;
                 INSERT INTO kv (key, value) VALUES ('cellular.day', '20000'),
                   ('cellular.bytes', '1234');
                 PRAGMA user_version = 6;",
            )
            .unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.add_cellular_use(20_000, 0).unwrap(), 1234);
    assert_eq!(s.add_cellular_use(19_999, 0).unwrap(), 1234);
}

#[test]
fn a_directorys_identities_are_its_own_files_not_its_subdirectories_nor_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    // Names that sort just before and after `DCIM/100ABCDE/` ('-' and '.' before '/', '0'
    // after it), a subdirectory, and the root.
    let paths = [
        "A.JPG",
        "DCIM/100ABCDE/ABCD0001.JPG",
        "DCIM/100ABCDE/ABCD0002.MOV",
        "DCIM/100ABCDE/SUB/ABCD0003.JPG",
        "DCIM/100ABCDE-/B.JPG",
        "DCIM/100ABCDE.JPG",
        "DCIM/100ABCDE0/C.JPG",
        "DCIM/100ABCDEF/D.JPG",
    ];
    let files: Vec<FoundFile> = paths.iter().map(|p| found(p, 1, 1)).collect();
    s.upsert_files(&files).unwrap();
    let in_dir = |d: Option<&str>| {
        let d = d.map(|d| StoragePath::from_stored(d.to_string()));
        let mut out = Vec::new();
        s.for_each_identity_in(d.as_ref(), |it| out.push(it.path.to_string()))
            .unwrap();
        out.sort();
        out
    };
    assert_eq!(
        in_dir(Some("DCIM/100ABCDE")),
        ["DCIM/100ABCDE/ABCD0001.JPG", "DCIM/100ABCDE/ABCD0002.MOV"]
    );
    assert_eq!(in_dir(Some("DCIM")), ["DCIM/100ABCDE.JPG"]);
    assert_eq!(
        in_dir(Some("DCIM/100ABCDE/SUB")),
        ["DCIM/100ABCDE/SUB/ABCD0003.JPG"]
    );
    assert_eq!(in_dir(None), ["A.JPG"]);
    assert!(in_dir(Some("DCIM/999")).is_empty());
    // The open ones are every pending one; done ones are not.
    let first = s.list(None, 1, 0).unwrap().remove(0);
    started(&s, first.id, "http://h/files/1");
    s.mark_done(first.id).unwrap();
    let mut open = 0;
    s.for_each_open_identity(|it| {
        assert_ne!(it.id, first.id);
        open += 1;
    })
    .unwrap();
    assert_eq!(open, paths.len() - 1);
}

#[test]
fn a_page_of_one_state_is_that_states_items_in_id_order_after_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let files: Vec<FoundFile> = (0..20)
        .map(|i| found(&format!("DCIM/{i:04}.JPG"), 1, 1))
        .collect();
    s.upsert_files(&files).unwrap();
    let all = s.list(None, 100, 0).unwrap();
    assert_eq!(all.len(), 20);
    // Every third one failed: a page of failed ones skips the rest, in id order.
    let failed: Vec<i64> = all.iter().step_by(3).map(|i| i.id).collect();
    for id in &failed {
        s.mark_failed(*id, "bad").unwrap();
    }
    let page = |after| -> Vec<i64> {
        s.list(Some(ItemState::Failed), 3, after)
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect()
    };
    assert_eq!(page(0), failed[..3]);
    assert_eq!(page(failed[2]), failed[3..6]);
    assert_eq!(page(failed[5]), failed[6..]);
    assert!(s.list(Some(ItemState::Done), 3, 0).unwrap().is_empty());
    assert_eq!(s.list(None, 5, all[4].id).unwrap()[0].id, all[5].id);
    // The page is a seek in the state index, not a walk of the table.
    let plan: String = s
        .reader()
        .query_row(
            &format!("EXPLAIN QUERY PLAN {}", list_sql(true)),
            params!["failed", 0, 3],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("items_by_state_id"), "{plan}");
}

#[test]
fn the_history_summary_counts_every_row_not_the_first_ten_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.history_summary().unwrap(), HistorySummary::default());
    {
        let mut c = s.conn();
        let tx = c.transaction().unwrap();
        for i in 0..10_005i64 {
            tx.execute(
                "INSERT INTO history (storage_path, size, completed_at, freed_at)
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    format!("DCIM/100MEDIA/IMG_{i:05}.JPG"),
                    1000 + i,
                    1_700_000_000 + i,
                    (i % 1000 == 0).then_some(1_800_000_000i64),
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let sum = s.history_summary().unwrap();
    assert_eq!(
        sum,
        HistorySummary {
            uploads: 10_005,
            bytes: (0..10_005u64).map(|i| 1000 + i).sum(),
            freed: 11,
            first_completed_at: Some(1_700_000_000),
            last_completed_at: Some(1_700_010_004),
        }
    );
}
