//! The facts of one moment, for the rules (`space::decide`): the world (consent, pairing, the
//! card, recording, the card's space by statvfs) and the backed-up files with their metadata.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::FreeingError;
use crate::app::App;
use crate::config::Media;
use crate::credentials::Account;
use crate::space::{self, Card, FileFacts, OnCard, ReadBack, Server, World};
use crate::store::FreeCandidate;

/// The card's total and available space (to an unprivileged writer), by statvfs.
pub fn card_space(root: &Path) -> std::io::Result<Card> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed struct the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(Card {
        total_bytes: (st.f_blocks as u64).saturating_mul(unit),
        free_bytes: (st.f_bavail as u64).saturating_mul(unit),
    })
}

/// The facts of one moment: the world, and the account the pass asks the server with.
pub(super) struct Gathered {
    pub(super) world: World,
    /// The account the candidates were gathered under: the pass asks the server with its
    /// token only (an account change stops the pass).
    pub(super) account: Option<Account>,
}

/// Candidates read from the store at a time: the store's lock is held for a page's rows, and
/// the files are looked at between pages. Small in tests, so that they cross pages.
const PAGE: usize = if cfg!(test) { 2 } else { 256 };

fn policy(m: &Media) -> space::Policy {
    space::Policy {
        below_percent: m.free_space_below_percent,
        keep_days: m.keep_days,
        verify: m.free_space_verify,
        settle_secs: m.settle_secs,
    }
}

/// The world as it is now.
pub(super) fn world(app: &App) -> World {
    let media = &app.config().media;
    let account = app.account_for_upload();
    World {
        consent: app.settings().free_space,
        policy: policy(media),
        card: card_space(&media.root).ok(),
        media_available: app.media_available() && crate::scan::CardRoot::of(media).present(),
        paired: account.is_some(),
        clock_set: crate::clock::is_set(),
        recording: app.recording() || recording_flag(app),
        card_read_only: crate::card::mounted_read_only(&media.root),
        now: crate::clock::now_unix(),
    }
}

/// The firmware's recording flag, by the gate's reader; unlike the gate (which uploads when the
/// flag cannot be read), freeing counts an unreadable flag as recording: a doubt keeps every
/// file, and a lasting permission error shows as a "recording" hold.
pub(super) fn recording_flag(app: &App) -> bool {
    let r = crate::conditions::idle::read_recording_flag(&app.config().conditions.recording_flag);
    r.value || r.problem.is_some()
}

/// What the card shows at the file's path now (never through a symbolic link).
pub(super) fn on_card(root: &Path, disk: &Path) -> OnCard {
    if crate::media::check_no_symlink(root, disk).is_err() {
        return OnCard::NotRegular;
    }
    match std::fs::symlink_metadata(disk) {
        Err(_) => OnCard::Missing,
        Ok(m) if !m.is_file() => OnCard::NotRegular,
        Ok(m) => OnCard::Present {
            size: m.len(),
            mtime_ns: crate::media::mtime_ns(&m),
            ino: m.ino(),
        },
    }
}

/// Gathers the facts of now.
pub(super) fn gather(app: &App) -> Gathered {
    Gathered {
        world: world(app),
        account: app.account_for_upload(),
    }
}

/// The backed-up files freeing may consider, oldest capture first (modification time, then
/// id), from after `from` (a file's capture time and id; `None`: the oldest), each with what
/// the card shows of it now; empty ones left out. A page at a time
/// ([`PAGE`]), so a look over the card holds a page, not every backed-up file (`GET /v1/space`
/// held 146 MiB at 100,000 files; issue 29). `f` answers whether to go on. A blocking call:
/// a `stat` per file.
pub(super) fn for_each_file(
    app: &App,
    from: Option<(i64, i64)>,
    mut f: impl FnMut(FreeCandidate, FileFacts) -> bool,
) -> Result<(), FreeingError> {
    let root = &app.config().media.root;
    let account = app.account_for_upload();
    let region = account.as_ref().and_then(|a| a.region.clone());
    let endpoint = app
        .config()
        .cloud
        .endpoint_for(region.as_deref())
        .to_string();
    let mut after = from;
    loop {
        let page = app
            .free_candidates_after(after, PAGE)
            .map_err(FreeingError::Candidates)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some((last.item.mtime_ns, last.item.id));
        for c in page.into_iter().filter(|c| c.item.size > 0) {
            let it = &c.item;
            let facts = FileFacts {
                id: it.id,
                size: it.size,
                mtime_ns: it.mtime_ns,
                sent: c.sent,
                digest: c.sha256,
                endpoint_ok: it.upload_endpoint.as_deref() == Some(endpoint.as_str()),
                on_card: on_card(root, &it.storage_path.on_disk(root)),
                server: Server::NotAsked,
                receipt: space::Receipt::NotAsked,
                read_back: ReadBack::NotDone,
            };
            if !f(c, facts) {
                return Ok(());
            }
        }
    }
}

/// What a pass looks at next: the files the rules would free now (`Free` or `Confirm`),
/// oldest first, at most [`Look::WINDOW`]; and, at its first look, how many of the files the
/// rules keep, by reason.
pub(super) struct Look {
    pub(super) files: Vec<(FreeCandidate, FileFacts)>,
    /// More such files follow the window: look again, after it, once it is done.
    pub(super) more: bool,
    /// The kept files, by reason ([`space::Keep::code`]), and how many of them are kept as
    /// unverified.
    pub(super) kept: std::collections::BTreeMap<&'static str, u64>,
    pub(super) unverified: u64,
}

impl Look {
    /// Files a pass confirms before it looks again: what it holds, whatever the card's size.
    pub(super) const WINDOW: usize = if cfg!(test) { 3 } else { 64 };

    /// Where the next look starts: after the window's last file. The files before it were
    /// looked at in this pass (old enough for their verdicts not to wait on the clock); a
    /// file backed up meanwhile with an older capture time waits for the next pass.
    pub(super) fn next_from(&self) -> Option<(i64, i64)> {
        self.files.last().map(|(c, _)| (c.item.mtime_ns, c.item.id))
    }
}

/// One look over the card's backed-up files for a pass, from after `from` (a blocking call:
/// see [`for_each_file`]); `count`: count the kept files (the pass's first look), which
/// reads on past the window to the last file.
pub(super) fn look(
    app: &App,
    world: &World,
    from: Option<(i64, i64)>,
    count: bool,
) -> Result<Look, FreeingError> {
    let mut look = Look {
        files: Vec::new(),
        more: false,
        kept: Default::default(),
        unverified: 0,
    };
    for_each_file(app, from, |c, f| {
        match space::judge(world, &f) {
            space::Verdict::Free | space::Verdict::Confirm => {
                if look.files.len() == Look::WINDOW {
                    look.more = true;
                    return count;
                }
                look.files.push((c, f));
            }
            space::Verdict::Keep(k) if count => {
                *look.kept.entry(k.code()).or_default() += 1;
                look.unverified += u64::from(k.is_unverified());
            }
            _ => {}
        }
        true
    })?;
    Ok(look)
}

/// Runs [`gather`] on the blocking pool: a card of many files is many `stat`s.
pub(super) async fn gather_off_thread(app: &Arc<App>) -> Result<Gathered, FreeingError> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || gather(&a))
        .await
        .map_err(FreeingError::GatherTask)
}

/// Runs [`look`] on the blocking pool.
pub(super) async fn look_off_thread(
    app: &Arc<App>,
    world: &World,
    from: Option<(i64, i64)>,
    count: bool,
) -> Result<Look, FreeingError> {
    let (a, w) = (app.clone(), world.clone());
    tokio::task::spawn_blocking(move || look(&a, &w, from, count))
        .await
        .map_err(FreeingError::GatherTask)?
}
