//! `GET /v1/space` (and `cambackup space`): what a pass would do now, and why.

use std::sync::Arc;

use serde::Serialize;

use super::gather::{for_each_file, gather};
use super::FreeingError;
use crate::app::{App, PassReport};
use crate::space::{self, Card, Hold, Keep, Verdict};

/// `GET /v1/space` (and `cambackup space`): the card, the rules in force, what a pass would
/// free now and why not the rest. Deletes nothing and asks the server nothing: "would free"
/// files are still confirmed (HEAD, read-back) just before a real deletion.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceView {
    pub card: Option<Card>,
    pub rules: Rules,
    /// Why nothing would be freed now (empty: a pass would free).
    pub held_by: Vec<Hold>,
    pub target_free_bytes: Option<u64>,
    pub need_bytes: u64,
    /// Oldest first: what a pass would delete, each after the confirmations named.
    pub would_free: Vec<FileView>,
    /// Files that could be freed, but older ones free enough.
    pub not_needed: u64,
    /// Files kept, by reason.
    pub kept_by_reason: std::collections::BTreeMap<&'static str, u64>,
    /// The kept files (at most [`MAX_LISTED`]), with their reason.
    pub kept: Vec<FileView>,
    /// Files freed so far, newest first (at most [`MAX_LISTED`]).
    pub freed: Vec<FreedView>,
    pub last_pass: Option<PassReport>,
}

/// The most files a list in [`SpaceView`] holds.
pub const MAX_LISTED: usize = 200;

/// The rules in force.
#[derive(Debug, Clone, Serialize)]
pub struct Rules {
    pub free_space: crate::settings::FreeSpace,
    pub free_space_below_percent: Option<u8>,
    pub margin_percent: u64,
    pub keep_days: u32,
    pub free_space_verify: &'static str,
    /// `unlink`, or the maker's command.
    pub delete_with: String,
}

/// One file in [`SpaceView`].
#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub id: i64,
    pub storage_path: crate::media::StoragePath,
    pub size: u64,
    /// The file's modification time (unix seconds).
    pub modified_at: i64,
    /// What is asked just before deleting it: `head`, `read_back`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confirm: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<Keep>,
}

/// A freed file.
#[derive(Debug, Clone, Serialize)]
pub struct FreedView {
    pub id: i64,
    pub storage_path: crate::media::StoragePath,
    pub size: u64,
    pub freed_at: i64,
}

/// Builds [`SpaceView`] from the facts of now, on the blocking pool (a `stat` per file).
pub async fn preview(app: &Arc<App>) -> Result<SpaceView, FreeingError> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || preview_now(&a))
        .await
        .map_err(FreeingError::GatherTask)?
}

/// One look over the backed-up files, oldest first, a page at a time ([`for_each_file`]):
/// the view holds its lists' files (at most [`MAX_LISTED`] each) and counts the rest, so it
/// costs the same memory for 100 files or 1,000,000.
fn preview_now(app: &Arc<App>) -> Result<SpaceView, FreeingError> {
    let g = gather(app);
    let d = space::decide(&g.world, &[]);
    let media = &app.config().media;
    let file_view = |it: &crate::store::Item| FileView {
        id: it.id,
        storage_path: it.storage_path.clone(),
        size: it.size,
        modified_at: it.mtime_ns.div_euclid(1_000_000_000),
        confirm: Vec::new(),
        kept: None,
    };
    let mut view = SpaceView {
        card: g.world.card,
        rules: Rules {
            free_space: g.world.consent,
            free_space_below_percent: media.free_space_below_percent,
            margin_percent: space::MARGIN_PERCENT,
            keep_days: media.keep_days,
            free_space_verify: media.free_space_verify.as_str(),
            delete_with: media
                .delete_command
                .as_ref()
                .map_or_else(|| "unlink".to_string(), |p| p.display().to_string()),
        },
        held_by: d.holds.clone(),
        target_free_bytes: d.target_free_bytes,
        need_bytes: d.need_bytes,
        would_free: Vec::new(),
        not_needed: 0,
        kept_by_reason: Default::default(),
        kept: Vec::new(),
        freed: app
            .freed_files(MAX_LISTED as u32)?
            .into_iter()
            .map(|(it, at)| FreedView {
                id: it.id,
                storage_path: it.storage_path,
                size: it.size,
                freed_at: at,
            })
            .collect(),
        last_pass: app.last_pass(),
    };
    let mut selection = space::Selection::new(&g.world, d.need_bytes);
    for_each_file(app, None, |c, f| {
        match selection.offer(&f) {
            Verdict::Free | Verdict::Confirm if view.would_free.len() < MAX_LISTED => {
                let mut f = file_view(&c.item);
                // Asked of every file just before its deletion.
                f.confirm = vec!["head", "read_back"];
                view.would_free.push(f);
            }
            Verdict::NotNeeded => view.not_needed += 1,
            Verdict::Keep(k) => {
                *view.kept_by_reason.entry(k.code()).or_default() += 1;
                if view.kept.len() < MAX_LISTED {
                    let mut f = file_view(&c.item);
                    f.kept = Some(k);
                    view.kept.push(f);
                }
            }
            _ => {}
        }
        true
    })?;
    Ok(view)
}
