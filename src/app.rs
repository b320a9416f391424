//! The daemon's shared state and the operations the control API offers on it.
//!
//! Invariant: every change the user makes (consent, settings, pause, pairing, cancel) goes
//! through one of these methods, which persists it first and then calls [`App::enforce`], so an
//! upload that may no longer run is stopped at once (the transfer honours its stop token within
//! a second). The control API is a thin layer over this type; it holds no state of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::conditions::{Activity, Snapshot};
use crate::config::Config;
use crate::credentials::{self, Account};
use crate::events::{DaemonState, Event, Events};
use crate::gate::{Block, Verdict};
use crate::media::{Kind, MediaFilter, StoragePath};
use crate::secret::Secret;
use crate::settings::{Settings, SettingsPatch};
use crate::store::{
    self, FoundFile, HistoryEntry, Item, ItemState, ManualOutcome, QueueCounts, Store,
};
use crate::uplink::{self, UplinkStatus};
use crate::upload::metadata::UploadMetadata;
use crate::upload::tus;

/// What the server last said about the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountStatus {
    Ok,
    Unauthorized(String),
    SubscriptionInactive(String),
}

/// Set while an account is paired; erased with the rest of the account's data (`account.*`).
const PAIRED_KEY: &str = "account.paired";

impl AccountStatus {
    const KEY: &'static str = "account.status";

    fn as_str(&self) -> &'static str {
        match self {
            AccountStatus::Ok => "ok",
            AccountStatus::Unauthorized(_) => "unauthorized",
            AccountStatus::SubscriptionInactive(_) => "subscription_inactive",
        }
    }
}

/// An error for the API: a kind (which HTTP status), a snake_case code and a message that
/// names the field or item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

/// The class of an [`AppError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    Internal,
}

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            kind: ErrorKind::BadRequest,
            code,
            message: message.into(),
        }
    }
    fn conflict(code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            kind: ErrorKind::Conflict,
            code,
            message: message.into(),
        }
    }
    fn internal(e: impl std::fmt::Display) -> AppError {
        AppError {
            kind: ErrorKind::Internal,
            code: "internal",
            message: e.to_string(),
        }
    }
}

impl From<store::StoreError> for AppError {
    fn from(e: store::StoreError) -> AppError {
        match e {
            store::StoreError::NoSuchItem(id) => AppError {
                kind: ErrorKind::NotFound,
                code: "no_such_item",
                message: format!("no queue item with id {id}"),
            },
            e @ store::StoreError::WrongState { .. } => {
                AppError::conflict("wrong_state", e.to_string())
            }
            e => AppError::internal(e),
        }
    }
}

/// The upload in flight, as `status.current` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Current {
    pub id: i64,
    pub storage_path: StoragePath,
    pub bytes_sent: u64,
    pub bytes_total: u64,
    pub rate_bps: u64,
    pub eta_secs: Option<u64>,
}

/// Something only the user can fix, as `status.attention` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attention {
    /// A stable snake_case code the app can translate.
    pub code: &'static str,
    /// A sentence for the user, naming what to do.
    pub message: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: DaemonState,
    pub blocked_by: Vec<Block>,
    /// Extension: what blocks a manual upload (only the network preference and heat do).
    pub manual_blocked_by: Vec<Block>,
    pub conditions: Option<Snapshot>,
    pub media_available: bool,
    pub paused: bool,
    pub queue: QueueCounts,
    pub current: Option<Current>,
    /// Extension: every upload in flight when `cloud.concurrency` > 1.
    pub uploads: Vec<Current>,
    /// What only the user can fix (empty when all is well).
    pub attention: Vec<Attention>,
    /// The interface uploads leave through, the binding in force, metered or not and why.
    pub uplink: UplinkStatus,
}

/// `GET /v1/account`: never the token.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub paired: bool,
    pub user_id: Option<String>,
    pub region: Option<String>,
    pub endpoint: String,
    /// `ok`, `unauthorized` or `subscription_inactive`; absent when not paired.
    pub status: Option<&'static str>,
}

/// One path's answer to `POST /v1/uploads`.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub path: StoragePath,
    pub id: i64,
    /// `queued` or `already_uploaded`.
    pub outcome: &'static str,
}

/// `DELETE /v1/account`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Unpaired {
    /// Unfinished server uploads ended with tus termination.
    pub terminated: usize,
    /// Unfinished server uploads the server could not or would not terminate.
    pub not_terminated: usize,
}

/// `GET /v1/privacy`: exactly what leaves the device, and where to.
#[derive(Debug, Clone, Serialize)]
pub struct Privacy {
    pub fields_sent: [&'static str; 4],
    pub values: BTreeMap<&'static str, Option<String>>,
    pub endpoint: String,
    pub transport: &'static str,
    pub settings: Settings,
    pub history_days: u32,
    pub sent_only_when: &'static str,
    /// Extension: which way the bytes leave (the interface and its binding), in one sentence.
    pub leaves_through: String,
}

#[derive(Debug)]
struct Live {
    snapshot: Option<Snapshot>,
    verdict: Verdict,
    /// The auto gate after hold-down (see `set_conditions`).
    auto_open: bool,
    media_available: bool,
    settings: Settings,
    paused: bool,
    account: Option<Account>,
    account_status: AccountStatus,
    in_flight: BTreeMap<i64, InFlight>,
    last_state: Option<(DaemonState, Vec<Block>)>,
    /// The last write to the state directory failed because it is full.
    state_dir_full: Option<String>,
    /// Entries on the card the last scan could not read.
    unreadable_on_card: u64,
}

#[derive(Debug)]
struct InFlight {
    item: Item,
    stop: CancellationToken,
    bytes_sent: u64,
    started: Instant,
    started_bytes: u64,
    rate_bps: u64,
    last_event: Option<Instant>,
}

/// The daemon's shared state. One per daemon, behind an `Arc`.
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub activity: Arc<Activity>,
    pub filter: MediaFilter,
    pub events: Events,
    pub client: tus::Client,
    /// Cancelled on SIGTERM/SIGINT; every task watches it.
    pub shutdown: CancellationToken,
    /// Wakes the scheduler: something changed that may let an item start.
    pub kick: Notify,
    /// Wakes the conditions loop: re-read the device now (a recording signal came).
    pub recheck: Notify,
    live: Mutex<Live>,
    heartbeats: Mutex<BTreeMap<&'static str, Instant>>,
}

/// Where the app's `PUT /v1/network` answer is kept across restarts.
const METERED_KEY: &str = "network.metered";

/// Progress events at most this often per upload (the app's UI needs no more).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl App {
    /// Builds the state from the config, the opened store and the credentials file.
    pub fn new(config: Config, store: Store, client: tus::Client) -> Result<App, AppError> {
        if let Err(e) = store.ensure_choices_saved(&config.defaults) {
            tracing::error!(error = %e, "cannot write the user's choices file");
        }
        let settings = store.settings(&config.defaults)?;
        let paused = store.paused()?;
        let account = match credentials::load(&config.state.dir) {
            Ok(a) => a,
            // A damaged account file (a power cut between zero-filling and unlinking it while
            // unpairing, or a bad flash block) must not keep the daemon from starting: the
            // app could not even pair again. It is erased, and the device is unpaired.
            Err(e @ credentials::CredentialsError::Invalid { .. }) => {
                tracing::error!(error = %e, "the account file is damaged; erasing it: the device is unpaired until the app pairs again");
                if let Err(e) = credentials::erase(&config.state.dir) {
                    tracing::error!(error = %e, "cannot erase the damaged account file");
                }
                None
            }
            // Unreadable (an I/O error): unpaired for now, the file left for the next start.
            Err(e) => {
                tracing::error!(error = %e, "the account file cannot be read: the device is unpaired for now");
                None
            }
        };
        // Paired before, and the account is gone: an unpairing was cut short (the account
        // file goes first, the rest after). Finish it, so the old account's manual requests
        // and server uploads never carry on under the next one.
        if account.is_none() && store.get_kv(PAIRED_KEY)?.is_some() {
            tracing::warn!("finishing an unpairing that was interrupted");
            store.erase_account_data()?;
        }
        let account_status = match store.get_kv(AccountStatus::KEY)?.as_deref() {
            Some("unauthorized") => {
                AccountStatus::Unauthorized("the server refused the token".into())
            }
            Some("subscription_inactive") => {
                AccountStatus::SubscriptionInactive("the subscription is inactive".into())
            }
            _ => AccountStatus::Ok,
        };
        // Upload URLs created at another endpoint (the maker moved the service, or the account's
        // region changed while the daemon was down) are never resumed, terminated or asked
        // about there: that would send the bearer token to the old host.
        if let Some(a) = &account {
            let endpoint = config.cloud.endpoint_for(a.region.as_deref());
            match store.forget_urls_not_for(endpoint) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    uploads = n,
                    "the endpoint changed: unfinished uploads start anew there"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot check the unfinished uploads' endpoint")
                }
            }
        }
        let filter = config.media.filter.clone();
        let activity = Activity::new();
        activity.set_metered_override(match store.get_kv(METERED_KEY)?.as_deref() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        });
        Ok(App {
            config: Arc::new(config),
            store,
            activity: Arc::new(activity),
            filter,
            events: Events::default(),
            client,
            shutdown: CancellationToken::new(),
            kick: Notify::new(),
            recheck: Notify::new(),
            live: Mutex::new(Live {
                snapshot: None,
                verdict: Verdict::default(),
                auto_open: false,
                media_available: true,
                settings,
                paused,
                account,
                account_status,
                in_flight: BTreeMap::new(),
                last_state: None,
                state_dir_full: None,
                unreadable_on_card: 0,
            }),
            heartbeats: Mutex::new(BTreeMap::new()),
        })
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic while holding this lock is a bug; the data is plain and still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- read side -----

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<Status, AppError> {
        let queue = self.store.counts()?;
        let live = self.live();
        let uploads: Vec<Current> = live.in_flight.values().map(current_of).collect();
        let attention = attention_of(&live, &queue);
        Ok(Status {
            attention,
            state: state_of(&live, queue.pending + queue.uploading > 0),
            blocked_by: live.verdict.auto.clone(),
            manual_blocked_by: live.verdict.manual.clone(),
            conditions: live.snapshot.clone(),
            media_available: live.media_available,
            paused: live.paused,
            queue,
            current: uploads.first().cloned(),
            uploads,
            uplink: uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                self.activity.metered_override(),
            ),
        })
    }

    /// `GET /v1/queue`.
    pub fn queue(
        &self,
        state: Option<ItemState>,
        limit: u32,
        after: i64,
    ) -> Result<Vec<Item>, AppError> {
        let mut items = self.store.list(state, limit.clamp(1, 1000), after)?;
        let live = self.live();
        for it in &mut items {
            if let Some(f) = live.in_flight.get(&it.id) {
                it.bytes_sent = f.bytes_sent;
            }
        }
        Ok(items)
    }

    /// `GET /v1/history`.
    pub fn history(&self, limit: u32) -> Result<Vec<HistoryEntry>, AppError> {
        Ok(self.store.history(limit.clamp(1, 10_000))?)
    }

    /// `GET /v1/settings`.
    pub fn settings(&self) -> Settings {
        self.live().settings.clone()
    }

    /// `GET /v1/account`.
    pub fn account(&self) -> AccountView {
        let live = self.live();
        let region = live.account.as_ref().and_then(|a| a.region.clone());
        AccountView {
            paired: live.account.is_some(),
            user_id: live.account.as_ref().map(|a| a.user_id.clone()),
            endpoint: self
                .config
                .cloud
                .endpoint_for(region.as_deref())
                .to_string(),
            region,
            status: live.account.as_ref().map(|_| live.account_status.as_str()),
        }
    }

    /// The paired account, if any (for the scheduler).
    pub fn account_for_upload(&self) -> Option<Account> {
        let live = self.live();
        match live.account_status {
            AccountStatus::Ok => live.account.clone(),
            _ => None,
        }
    }

    /// `GET /v1/privacy`.
    pub fn privacy(&self) -> Privacy {
        let live = self.live();
        let region = live.account.as_ref().and_then(|a| a.region.clone());
        let endpoint = self
            .config
            .cloud
            .endpoint_for(region.as_deref())
            .to_string();
        let mut values = BTreeMap::new();
        values.insert("user_id", live.account.as_ref().map(|a| a.user_id.clone()));
        values.insert("device_type", Some(self.config.device.device_type.clone()));
        values.insert("serial_number", Some(self.config.device.serial.clone()));
        values.insert("storage_path", None);
        Privacy {
            fields_sent: UploadMetadata::FIELDS,
            values,
            transport: if endpoint.starts_with("https://") {
                "https (TLS, certificate verified)"
            } else {
                "http to this device only (loopback)"
            },
            endpoint,
            settings: live.settings.clone(),
            history_days: self.config.state.history_days,
            leaves_through: uplink::privacy_sentence(&uplink::describe(
                live.snapshot.as_ref(),
                &self.client.binding(),
                self.activity.metered_override(),
            )),
            sent_only_when: "a file is uploaded: with auto_upload on and the conditions met, \
                             or when the app asks for a manual upload",
        }
    }

    /// `GET /v1/events`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Records that the loop `name` is alive (for `GET /v1/health` and the systemd watchdog).
    pub fn beat(&self, name: &'static str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Instant::now());
    }

    /// `GET /v1/health`: every loop has beaten within `max_age`. Names the one that has not.
    pub fn health(&self, max_age: std::time::Duration) -> Result<(), String> {
        let beats = self.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
        for (name, at) in beats.iter() {
            if at.elapsed() > max_age {
                return Err(format!(
                    "the {name} loop has not run for {:?}",
                    at.elapsed()
                ));
            }
        }
        Ok(())
    }

    // ----- the user's changes -----

    /// `PATCH /v1/settings`: persisted, then enforced (consent off stops automatic uploads).
    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, AppError> {
        let new = self.settings().apply(patch);
        self.store.save_settings(&new)?;
        let old = std::mem::replace(&mut self.live().settings, new.clone());
        if old.auto_upload != new.auto_upload {
            tracing::info!(auto_upload = new.auto_upload, "the user changed consent");
        }
        self.reevaluate();
        // The gate's verdict depends on the settings: have the conditions loop decide anew.
        self.recheck.notify_one();
        Ok(new)
    }

    /// `POST /v1/pause` / `POST /v1/resume`, kept across restarts.
    pub fn set_paused(&self, paused: bool) -> Result<(), AppError> {
        self.store.set_paused(paused)?;
        self.live().paused = paused;
        tracing::info!(
            paused,
            "the user {} uploads",
            if paused { "paused" } else { "resumed" }
        );
        self.reevaluate();
        Ok(())
    }

    /// `PUT /v1/network` from the app: whether the Wi-Fi is metered (`None`: the daemon decides
    /// from the firmware's flag and the network's signs). Persisted, then enforced: a metered
    /// Wi-Fi under `wifi`/`unmetered` stops the upload in flight at the next conditions read,
    /// which this triggers at once.
    pub fn set_metered(&self, metered: Option<bool>) -> Result<Option<bool>, AppError> {
        let v = metered.map(|m| if m { "true" } else { "false" });
        self.store.set_kv(METERED_KEY, v)?;
        self.activity.set_metered_override(metered);
        tracing::info!(?metered, "the app set whether the Wi-Fi is metered");
        self.recheck.notify_one();
        Ok(metered)
    }

    /// `PUT /v1/recording` from the camera firmware.
    pub fn set_recording(&self, active: bool) {
        self.activity.set_recording(active);
        self.recheck.notify_one();
    }

    /// `POST /v1/uploads`: checks every path first (all or nothing), then queues them as manual.
    pub fn upload(&self, paths: &[String]) -> Result<Vec<Accepted>, AppError> {
        if paths.is_empty() {
            return Err(AppError::bad_request(
                "bad_paths",
                "`paths` is empty: name at least one file",
            ));
        }
        let root = &self.config.media.root;
        let mut found = Vec::with_capacity(paths.len());
        for p in paths {
            let bad = |why: String| AppError::bad_request("bad_path", format!("`{p}`: {why}"));
            let sp = StoragePath::from_user(root, p).map_err(|e| bad(e.to_string()))?;
            let disk = sp.on_disk(root);
            // Links on the card are never followed (the scan, the watcher and the uploader
            // refuse them too), whether the file itself or a directory on its way is one.
            crate::media::check_no_symlink(root, &disk).map_err(|e| bad(e.to_string()))?;
            let meta = std::fs::symlink_metadata(&disk)
                .map_err(|e| bad(format!("cannot read it: {e}")))?;
            if !meta.is_file() {
                return Err(bad("not a regular file".into()));
            }
            let kind = self.filter.classify(&sp).ok_or_else(|| {
                bad("not a photo or video by its extension, or excluded by the config".into())
            })?;
            found.push(FoundFile {
                path: sp,
                kind,
                size: meta.len(),
                mtime_ns: crate::media::mtime_ns(&meta),
            });
        }
        let mut out = Vec::with_capacity(found.len());
        for f in found {
            let (id, outcome) = match self.store.enqueue_manual(&f)? {
                ManualOutcome::Queued(id) => (id, "queued"),
                ManualOutcome::AlreadyUploaded(id) => (id, "already_uploaded"),
            };
            // An upload already in flight now runs under the manual rules too.
            if let Some(flight) = self.live().in_flight.get_mut(&id) {
                flight.item.manual = true;
            }
            out.push(Accepted {
                path: f.path,
                id,
                outcome,
            });
        }
        self.kick.notify_one();
        Ok(out)
    }

    /// `POST /v1/queue/{id}/retry`.
    pub fn retry(&self, id: i64) -> Result<Item, AppError> {
        self.store.retry(id)?;
        self.kick.notify_one();
        self.item(id)
    }

    /// `DELETE /v1/queue/{id}`: stops it if in flight, ends its server upload (tus termination).
    pub async fn cancel(&self, id: i64) -> Result<Item, AppError> {
        if let Some(f) = self.live().in_flight.get(&id) {
            f.stop.cancel();
        }
        let url = self.store.cancel(id)?;
        // Bound first: a guard in the `if let` scrutinee would live across the await (not Send).
        let account = self.live().account.clone();
        if let (Some(url), Some(acct)) = (url, account) {
            self.terminate(&url, &acct.token).await;
        }
        let item = self.item(id)?;
        self.item_event(&item, None);
        Ok(item)
    }

    /// `PUT /v1/account`: pairs (or re-pairs) and clears an earlier unauthorized state. The
    /// user ID and token were checked at the edge ([`credentials::Pairing`]); the region is
    /// checked here, against the config.
    pub fn pair(&self, req: credentials::Pairing) -> Result<AccountView, AppError> {
        let regions = &self.config.cloud.regions;
        if let Some(r) = &req.region {
            if !regions.is_empty() && !regions.contains_key(r) {
                let known: Vec<&str> = regions.keys().map(String::as_str).collect();
                return Err(AppError::bad_request(
                    "unknown_region",
                    format!(
                        "`region` \"{r}\" is not one of the configured regions: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        let account = Account {
            user_id: req.user_id.into_string(),
            token: req.token,
            region: req.region.clone(),
        };
        credentials::save(&self.config.state.dir, &account).map_err(AppError::internal)?;
        self.store.set_kv(AccountStatus::KEY, None)?;
        self.store.set_kv(PAIRED_KEY, Some("1"))?;
        let switched = {
            let mut live = self.live();
            let switched = live
                .account
                .as_ref()
                .is_some_and(|a| a.user_id != account.user_id || a.region != account.region);
            if switched {
                // Uploads in flight carry the old account's user ID (and go to its region):
                // stop them, and start the unfinished ones anew under the new account.
                for f in live.in_flight.values() {
                    f.stop.cancel();
                }
            }
            live.account = Some(account);
            live.account_status = AccountStatus::Ok;
            switched
        };
        if switched {
            self.store.forget_upload_urls()?;
            tracing::info!("paired with a different account: unfinished uploads start anew");
        }
        tracing::info!("paired with an account");
        self.reevaluate();
        self.kick.notify_one();
        Ok(self.account())
    }

    /// `DELETE /v1/account`: stops uploads, ends the unfinished server uploads, and erases the
    /// token, the user ID, the upload URLs and the history.
    pub async fn unpair(&self) -> Result<Unpaired, AppError> {
        let account = {
            let mut live = self.live();
            let a = live.account.take();
            live.account_status = AccountStatus::Ok;
            for f in live.in_flight.values() {
                f.stop.cancel();
            }
            a
        };
        self.reevaluate();
        // The token file goes first, before the slow network work below: a crash or a SIGTERM
        // during the terminations must not leave the device paired after a restart. The token
        // stays in memory just long enough to end the server uploads.
        credentials::erase(&self.config.state.dir).map_err(AppError::internal)?;
        self.store.set_kv(AccountStatus::KEY, None)?;
        let mut report = Unpaired {
            terminated: 0,
            not_terminated: 0,
        };
        let urls = self.store.unfinished_upload_urls()?;
        for (_, url) in &urls {
            match &account {
                Some(a) if self.terminate(url, &a.token).await => report.terminated += 1,
                _ => report.not_terminated += 1,
            }
        }
        self.store.erase_account_data()?;
        tracing::info!(
            terminated = report.terminated,
            not_terminated = report.not_terminated,
            "unpaired: token, user ID, upload URLs and history erased"
        );
        self.reevaluate();
        Ok(report)
    }

    async fn terminate(&self, url: &str, token: &Secret) -> bool {
        let ask = self.client.terminate(url, token);
        match tokio::time::timeout(std::time::Duration::from_secs(10), ask).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not terminate an unfinished server upload");
                false
            }
            Err(_) => {
                tracing::warn!("terminating an unfinished server upload timed out");
                false
            }
        }
    }

    fn item(&self, id: i64) -> Result<Item, AppError> {
        Ok(self
            .store
            .item(id)?
            .ok_or(store::StoreError::NoSuchItem(id))?)
    }

    // ----- the daemon's own changes -----

    /// Queues files that settled on the card and wakes whoever waits for work. Returns how
    /// many were added; a failure is remembered for `attention` (the caller tries again).
    pub fn enqueue(&self, files: &[FoundFile]) -> Result<usize, store::StoreError> {
        if files.is_empty() {
            return Ok(0);
        }
        match self.store.upsert_files(files) {
            Ok(n) => {
                self.store_ok();
                if n > 0 {
                    self.queued();
                }
                Ok(n)
            }
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        }
    }

    /// A media file was deleted from the card (which is present): its queued items go.
    pub fn drop_deleted(&self, path: &StoragePath) {
        match self.store.skip_deleted(path) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(path = %path, items = n, "file deleted before upload: dropped from the queue");
                self.reevaluate();
            }
            Err(e) => {
                self.store_failed(&e);
                tracing::error!(error = %e, "could not drop a deleted file from the queue");
            }
        }
    }

    /// A full scan finished.
    pub fn scanned(&self, report: &crate::scan::Report) {
        if report.queued + report.dropped > 0 {
            self.store_ok();
        }
        self.live().unreadable_on_card = report.unreadable;
        if report.queued > 0 {
            self.queued();
        }
        if report.dropped > 0 {
            self.reevaluate();
        }
    }

    /// A write to the state directory failed; a full disk is shown in `attention`.
    pub fn store_failed(&self, e: &store::StoreError) {
        if e.is_disk_full() {
            let mut live = self.live();
            if live.state_dir_full.is_none() {
                tracing::error!(dir = %self.config.state.dir.display(), "the state directory is full");
            }
            live.state_dir_full = Some(e.to_string());
            drop(live);
            // The WAL may be what filled it: fold it into the database and truncate it.
            let _ = self.store.checkpoint();
        }
    }

    /// A write to the state directory succeeded.
    pub fn store_ok(&self) {
        let mut live = self.live();
        if live.state_dir_full.take().is_some() {
            tracing::info!("the state directory has room again");
        }
    }

    /// The conditions loop's reading: the snapshot, the gate's verdict, and whether the auto
    /// gate is open after hold-down.
    pub fn set_conditions(&self, snapshot: Snapshot, verdict: Verdict, auto_open: bool) {
        let opened = {
            let mut live = self.live();
            let opened = (auto_open && !live.auto_open)
                || (verdict.manual_allowed() && !live.verdict.manual_allowed());
            live.snapshot = Some(snapshot);
            live.verdict = verdict;
            live.auto_open = auto_open;
            opened
        };
        self.reevaluate();
        if opened {
            self.kick.notify_one();
        }
    }

    /// The watcher's view of the card.
    pub fn set_media_available(&self, available: bool) {
        let changed = {
            let mut live = self.live();
            std::mem::replace(&mut live.media_available, available) != available
        };
        if changed {
            if available {
                tracing::info!(root = %self.config.media.root.display(), "media is back");
            } else {
                tracing::warn!(root = %self.config.media.root.display(), "media unavailable (card removed?)");
            }
            self.reevaluate();
            self.kick.notify_one();
        }
    }

    /// Whether the media root is there.
    pub fn media_available(&self) -> bool {
        self.live().media_available
    }

    /// The server refused the account (401/402): uploads stop until the user pairs again.
    pub fn set_account_status(&self, status: AccountStatus) {
        let v = match &status {
            AccountStatus::Ok => None,
            s => Some(s.as_str()),
        };
        if let Err(e) = self.store.set_kv(AccountStatus::KEY, v) {
            tracing::error!(error = %e, "could not store the account status");
        }
        if let AccountStatus::Unauthorized(m) | AccountStatus::SubscriptionInactive(m) = &status {
            tracing::warn!(reason = %m, "the server refused the account; uploads stop until the app pairs again");
        }
        self.live().account_status = status;
        self.reevaluate();
    }

    /// What the scheduler may start now: `(allow_auto, allow_manual, auto kinds)`; `None` when
    /// nothing may start at all.
    pub fn permits(&self) -> Option<(bool, bool, Vec<Kind>)> {
        let live = self.live();
        permits_of(&live)
    }

    /// Registers an upload that starts; returns its stop token.
    pub fn begin(&self, item: &Item) -> CancellationToken {
        let stop = self.shutdown.child_token();
        self.live().in_flight.insert(
            item.id,
            InFlight {
                item: item.clone(),
                stop: stop.clone(),
                bytes_sent: item.bytes_sent,
                started: Instant::now(),
                started_bytes: item.bytes_sent,
                rate_bps: 0,
                last_event: None,
            },
        );
        self.item_event(item, None);
        self.reevaluate();
        // The conditions loop polls slowly while idle; an upload in flight needs it every
        // second, so that losing a condition stops the upload within 2 s.
        self.recheck.notify_one();
        stop
    }

    /// Progress of an upload in flight (bytes the server acknowledged).
    pub fn progress(&self, id: i64, bytes_sent: u64) {
        let event = {
            let mut live = self.live();
            let Some(f) = live.in_flight.get_mut(&id) else {
                return;
            };
            f.bytes_sent = bytes_sent;
            let secs = f.started.elapsed().as_secs_f64();
            // A rate over less than 100 ms says little; before that the UI shows none.
            if secs > 0.1 {
                f.rate_bps = (bytes_sent.saturating_sub(f.started_bytes) as f64 / secs) as u64;
            }
            let due = f.last_event.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                || bytes_sent == f.item.size;
            if !due {
                return;
            }
            f.last_event = Some(Instant::now());
            Event::Progress {
                id,
                storage_path: f.item.storage_path.clone(),
                bytes_sent,
                bytes_total: f.item.size,
                rate_bps: f.rate_bps,
            }
        };
        self.events.send(event);
    }

    /// An upload ended (whatever the outcome, already recorded in the store).
    pub fn end(&self, id: i64) {
        self.live().in_flight.remove(&id);
        if let Ok(Some(item)) = self.store.item(id) {
            self.item_event(&item, item.last_error.clone());
        }
        self.reevaluate();
    }

    /// Sends an `item` event.
    pub fn item_event(&self, item: &Item, error: Option<String>) {
        self.events.send(Event::Item {
            id: item.id,
            storage_path: item.storage_path.clone(),
            state: item.state,
            error,
        });
    }

    /// Stops every upload in flight that may no longer run, and announces a state change.
    /// Called after every change of conditions, settings, pause, account or media.
    pub fn reevaluate(&self) {
        // One index probe, not the full per-state count: this runs at every upload start and
        // end and every change of the gate's answer, on a queue of up to 100,000 items.
        let waiting = self.store.has_pending().unwrap_or(false);
        let mut live = self.live();
        let permits = permits_of(&live);
        for f in live.in_flight.values() {
            let may = match &permits {
                None => false,
                Some((auto, manual, kinds)) => {
                    if f.item.manual {
                        *manual
                    } else {
                        *auto && kinds.contains(&f.item.kind)
                    }
                }
            };
            if !may && !f.stop.is_cancelled() {
                tracing::info!(id = f.item.id, "stopping an upload: it may no longer run");
                f.stop.cancel();
            }
        }
        let now = (state_of(&live, waiting), live.verdict.auto.clone());
        if live.last_state.as_ref() != Some(&now) {
            tracing::info!(state = ?now.0, blocked_by = ?now.1, "state changed");
            live.last_state = Some(now.clone());
            drop(live);
            self.events.send(Event::State {
                state: now.0,
                blocked_by: now.1,
            });
        }
    }

    /// New items were queued: wake the scheduler, and the conditions loop so the hold-down
    /// starts counting now rather than at its next slow poll.
    pub fn queued(&self) {
        self.kick.notify_one();
        self.recheck.notify_one();
    }

    /// Whether queued items wait (for conditions, a back-off, or a free slot).
    pub fn has_waiting_work(&self) -> bool {
        self.store.has_pending().unwrap_or(false)
    }

    /// Stops every upload in flight (they resume later by HEAD): the conditions loop calls it
    /// when the interface uploads may use changes, since open connections keep their binding.
    pub fn stop_uploads(&self, why: &str) {
        for f in self.live().in_flight.values() {
            if !f.stop.is_cancelled() {
                tracing::info!(id = f.item.id, why, "stopping an upload");
                f.stop.cancel();
            }
        }
    }

    /// Ids of the uploads in flight.
    pub fn in_flight(&self) -> Vec<i64> {
        self.live().in_flight.keys().copied().collect()
    }
}

fn permits_of(live: &Live) -> Option<(bool, bool, Vec<Kind>)> {
    if live.paused
        || !live.media_available
        || live.account.is_none()
        || live.account_status != AccountStatus::Ok
    {
        return None;
    }
    let auto = live.auto_open && live.settings.auto_upload;
    let manual = live.verdict.manual_allowed() && live.snapshot.is_some();
    Some((auto, manual, live.settings.data_types.clone()))
}

/// The daemon's state; `waiting` is whether any item is pending.
fn state_of(live: &Live, waiting: bool) -> DaemonState {
    if live.account.is_none() {
        return DaemonState::Unpaired;
    }
    match live.account_status {
        AccountStatus::Unauthorized(_) => return DaemonState::Unauthorized,
        AccountStatus::SubscriptionInactive(_) => return DaemonState::SubscriptionInactive,
        AccountStatus::Ok => {}
    }
    if live.paused {
        DaemonState::Paused
    } else if !live.media_available {
        DaemonState::MediaUnavailable
    } else if !live.in_flight.is_empty() {
        DaemonState::Uploading
    } else if waiting {
        DaemonState::Waiting
    } else {
        DaemonState::Idle
    }
}

/// What only the user can fix, from the live state and the queue counts.
fn attention_of(live: &Live, queue: &QueueCounts) -> Vec<Attention> {
    let mut out = Vec::new();
    let mut add = |code, message: String| out.push(Attention { code, message });
    match &live.account_status {
        AccountStatus::Unauthorized(m) => add(
            "unauthorized",
            format!(
                "The server refused the account's token ({m}): pair the camera again in the app."
            ),
        ),
        AccountStatus::SubscriptionInactive(m) => add(
            "subscription_inactive",
            format!("The cloud subscription is inactive ({m}): renew it, then pair again."),
        ),
        AccountStatus::Ok => {}
    }
    if !live.media_available {
        add(
            "media_unavailable",
            "The memory card is missing or unreadable: insert it.".into(),
        );
    }
    if let Some(e) = &live.state_dir_full {
        add(
            "state_dir_full",
            format!("The camera's storage for the upload queue is full ({e}): free some space; queued uploads continue by themselves."),
        );
    }
    if queue.failed > 0 {
        add(
            "items_failed",
            format!("{} file(s) could not be uploaded and wait for you: see the queue's failed items and retry them.", queue.failed),
        );
    }
    if live.unreadable_on_card > 0 {
        add(
            "unreadable_files",
            format!("{} entries on the card could not be read (permissions or card errors): they are not backed up; check the card.", live.unreadable_on_card),
        );
    }
    out
}

fn current_of(f: &InFlight) -> Current {
    let left = f.item.size.saturating_sub(f.bytes_sent);
    Current {
        id: f.item.id,
        storage_path: f.item.storage_path.clone(),
        bytes_sent: f.bytes_sent,
        bytes_total: f.item.size,
        rate_bps: f.rate_bps,
        eta_secs: (f.rate_bps > 0).then(|| left.div_ceil(f.rate_bps)),
    }
}
