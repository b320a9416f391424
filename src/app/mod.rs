//! The daemon's shared state and the operations the control API offers on it.
//!
//! Invariant: every change the user makes (consent, settings, pause, pairing, cancel) goes
//! through one of these methods, which persists it first and then calls [`App::enforce`], so an
//! upload that may no longer run is stopped at once (the transfer honours its stop token within
//! a second). A withdrawal (consent off, pause, anything narrower, unpairing) is
//! enforced even when the state disk is full, and saved as soon as it has room
//! ([`App::keep_saved`]); a grant that cannot be saved is refused. The control API is a thin layer over this type; it holds no state of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::card::Card;
use crate::conditions::wpa::Ssid;
use crate::conditions::{Activity, Snapshot};
use crate::config::Config;
use crate::credentials::{self, Account};
use crate::events::{DaemonState, Event, Events};
use crate::gate::{Block, Verdict};
use crate::media::{Kind, MediaFilter, StoragePath};
use crate::settings::{Settings, SettingsPatch};
use crate::store::{self, Checked, FoundFile, HistoryEntry, Item, ItemState, ManualOutcome, Store};
use crate::uplink;
use crate::upload::bind::Binding;
use crate::upload::tus;

mod account;
mod error;
mod flight;
mod outcome;
mod reach;
mod space;
mod status;
mod why;

pub use account::AccountStatus;
use account::PAIRED_KEY;
pub use error::{AppError, ErrorKind};
use flight::InFlight;
pub use outcome::Ending;
pub use space::PassReport;
use status::state_of;

#[cfg(test)]
pub use status::ATTENTION_CODES;
#[cfg(test)]
pub use why::{NOT_QUEUED_CODES, REASON_CODES};

/// One path's answer to `POST /v1/uploads`.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub path: StoragePath,
    pub id: i64,
    /// `queued` or `already_uploaded`.
    pub outcome: &'static str,
}

/// A `Retry-After` answered within this many seconds after the last one's hold ended continues
/// that outage ([`App::server_busy_again`]): the camera's request at the hold's end, with the
/// conditions' and the scheduler's wake-up and a slow first answer.
pub const OUTAGE_GOES_ON_WITHIN: i64 = 60;

#[derive(Debug)]
struct Live {
    snapshot: Option<Snapshot>,
    verdict: Verdict,
    /// The auto gate after hold-down (see `set_conditions`).
    auto_open: bool,
    media_available: bool,
    /// The card in the slot, as last read when it appeared.
    card: Card,
    settings: Settings,
    paused: bool,
    account: Option<Account>,
    account_status: AccountStatus,
    in_flight: BTreeMap<i64, InFlight>,
    last_state: Option<(DaemonState, Vec<Block>)>,
    /// The server asked (Retry-After) that no upload start before this unix second.
    server_not_before: i64,
    /// The last write to the state directory failed because it is full.
    state_dir_full: Option<String>,
    /// The user's choices in force are not saved the normal way yet (a withdrawal on a full
    /// disk; why): saved again every [`RESAVE_EVERY`] until they are.
    choices_unsaved: Option<String>,
    /// An unpairing erased the account file, but not yet the rest of the account's data (a
    /// full disk): finished by the same retry.
    unpair_unfinished: bool,
    /// Entries on the card the last scan could not read.
    unreadable_on_card: u64,
    /// What the last full scan of the card in the slot left out, by reason (`status.skipped`).
    skipped: crate::wire::Skipped,
    /// A full scan of the card in the slot has ended since it appeared: until then nothing
    /// says the queue holds all of its files (`status.card.safe_to_format`).
    card_scanned: bool,
    /// The watcher watches the card (see `set_watching`).
    card_watched: bool,
    /// Files the watcher holds until they settle, or could not queue yet.
    settling: u64,
    /// Bytes sent over cellular today (local day), as last counted.
    cellular_bytes_today: u64,
    /// The count the store last recorded: `cellular_bytes_today` but for bytes a full disk
    /// kept from being recorded (they wait in the throttle).
    cellular_recorded: u64,
    /// The wall clock is set ([`crate::clock::is_set`]): until it is, nothing starts (no
    /// certificate could be verified).
    clock_set: bool,
    /// The server refused the device's TLS certificate at the last attempt (why), until an
    /// upload goes through: shown in `attention` (the maker's support must fix it).
    certificate_refused: Option<String>,
    /// The server cannot be reached through the uplink (Wi-Fi without internet, a captive
    /// portal), until the link changes (`reach`).
    no_path: Option<reach::NoPath>,
}

/// The key/value prefix of a card's label, by serial.
const CARD_LABEL_KEY: &str = "card.label.";

/// The daemon's shared state. One per daemon, behind an `Arc`.
pub struct App {
    config: Arc<Config>,
    store: Store,
    activity: Arc<Activity>,
    events: Events,
    client: tus::Client,
    /// Cancelled on SIGTERM/SIGINT; every task watches it.
    shutdown: CancellationToken,
    /// Wakes the scheduler: something changed that may let an item start. Only the methods
    /// that make such a change notify it (mini-redis's `Db::set`), never their callers.
    kick: Notify,
    /// Wakes the conditions loop: re-read the device now (a recording signal, an upload that
    /// started, new files, changed settings).
    recheck: Notify,
    live: Mutex<Live>,
    /// Each loop's last beat, and whether it was resting (waiting for its events) since.
    heartbeats: Mutex<BTreeMap<&'static str, (Instant, bool)>>,
    /// Wakes the freeing task: the card may have run low (uploads done, a scan, settings).
    free_kick: Notify,
    freeing: Mutex<space::Freeing>,
    /// One change of the user's choices at a time: each saves the whole of them.
    choices: Mutex<()>,
    /// Wakes [`App::keep_saved`]: something waits to be saved again.
    resave: Notify,
}

/// How often choices a full disk had no room for are tried again.
const RESAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the server's last Retry-After (as a unix second) is kept across restarts.
const SERVER_NOT_BEFORE_KEY: &str = "server.not_before";

impl App {
    /// Builds the state from the config, the opened store and the credentials file.
    pub fn new(config: Config, store: Store, client: tus::Client) -> Result<App, AppError> {
        let choices_unsaved = match store.ensure_choices_saved(&config.defaults) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot write the user's choices file");
                Some(e.to_string())
            }
        };
        let settings = store.settings(&config.defaults)?;
        client.set_max_rate(settings.max_rate_bytes_per_sec());
        let paused = store.paused()?;
        let (account, gone) = load_account(&config);
        // Paired before, and the account is gone: an unpairing was cut short (the account
        // file goes first, the rest after). Finish it, so the old account's manual requests
        // and server uploads never carry on under the next one. An account file that is only
        // unreadable for now (an I/O error) is not a finished unpairing: nothing is erased.
        let mut unpair_unfinished = false;
        if gone && store.get_kv(PAIRED_KEY)?.is_some() {
            tracing::warn!("finishing an unpairing that was interrupted");
            // A full disk must not keep the daemon from starting: the account file is gone,
            // so nothing goes up under it; the rest is erased as soon as there is room.
            if let Err(e) = store.erase_account_data() {
                tracing::error!(error = %e, "cannot finish the unpairing yet: trying again");
                unpair_unfinished = true;
            }
        }
        let server_not_before = store
            .get_kv(SERVER_NOT_BEFORE_KEY)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let account_status = saved_account_status(&store)?;
        if let Some(a) = &account {
            forget_urls_elsewhere(&store, &config, a);
        }
        let activity = Activity::new();
        let (global, networks) = store.metered_answers()?;
        activity.set_metered_answers(answers_of(global, networks));
        // Looked at now, not assumed: a camera started without its card shows it from the
        // first answer (the watcher looks again every few seconds).
        let media_available = crate::scan::CardRoot::of(&config.media).present();
        Ok(App {
            config: Arc::new(config),
            store,
            activity: Arc::new(activity),
            events: Events::default(),
            client,
            shutdown: CancellationToken::new(),
            kick: Notify::new(),
            recheck: Notify::new(),
            live: Mutex::new(Live {
                snapshot: None,
                verdict: Verdict::default(),
                auto_open: false,
                media_available,
                card: Card::default(),
                settings,
                paused,
                account,
                account_status,
                in_flight: BTreeMap::new(),
                last_state: None,
                state_dir_full: None,
                choices_unsaved,
                unpair_unfinished,
                unreadable_on_card: 0,
                skipped: crate::wire::Skipped::default(),
                card_scanned: false,
                card_watched: false,
                settling: 0,
                server_not_before,
                clock_set: crate::clock::is_set(),
                certificate_refused: None,
                no_path: None,
                cellular_bytes_today: 0,
                cellular_recorded: 0,
            }),
            heartbeats: Mutex::new(BTreeMap::new()),
            free_kick: Notify::new(),
            freeing: Mutex::new(space::Freeing::default()),
            choices: Mutex::new(()),
            resave: Notify::new(),
        })
    }

    /// The camera maker's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store, for the tests that set up a queue's state directly. Outside tests nothing
    /// but App's own methods reaches it: App is the only writer.
    #[cfg(test)]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Which files are media.
    pub fn filter(&self) -> &MediaFilter {
        &self.config.media.filter
    }

    /// The firmware's and the card's activity signals (recording, media writes, metered).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Cancelled on SIGTERM/SIGINT.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Resolves when something changed that may let an item start (for the scheduler).
    pub fn kicked(&self) -> tokio::sync::futures::Notified<'_> {
        self.kick.notified()
    }

    /// Resolves when the device should be read again now (for the conditions loop).
    pub fn recheck_requested(&self) -> tokio::sync::futures::Notified<'_> {
        self.recheck.notified()
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic while holding this lock is a bug; the data is plain and still usable.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- read side -----

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

    /// The whole history in figures (the support bundle).
    pub fn history_summary(&self) -> Result<crate::store::HistorySummary, AppError> {
        Ok(self.store.history_summary()?)
    }

    /// `GET /v1/settings`.
    pub fn settings(&self) -> Settings {
        self.live().settings.clone()
    }

    /// `GET /v1/events`.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Records that the loop `name` is alive and at work (for `GET /v1/health` and the systemd
    /// watchdog): it must rest or beat again within the health's `max_age`.
    pub fn beat(&self, name: &'static str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (Instant::now(), false));
    }

    /// Records that the loop `name` is alive and now waits for its events (a notifier, a
    /// kick, its own timer), however long: a loop that sleeps until something happens is
    /// not hung, and must not have to wake up only to say so (issue 29: a daemon that sleeps).
    pub fn rest(&self, name: &'static str) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, (Instant::now(), true));
    }

    /// `GET /v1/health`: no loop has been at work without resting or beating for more than
    /// `max_age` (a loop stuck in its work). Names the one that has.
    pub fn health(&self, max_age: std::time::Duration) -> Result<(), String> {
        let beats = self.heartbeats.lock().unwrap_or_else(|e| e.into_inner());
        for (name, (at, resting)) in beats.iter() {
            if !resting && at.elapsed() > max_age {
                return Err(format!(
                    "the {name} loop has not run for {:?}",
                    at.elapsed()
                ));
            }
        }
        Ok(())
    }

    // ----- the user's changes -----

    /// `PATCH /v1/settings`. A grant (anything that allows more) is saved, then enforced, and
    /// refused when it cannot be saved. A withdrawal (consent off, freeing off, anything
    /// narrower) is enforced first and answered whatever the disk says: saved if it can be,
    /// else kept in force, shown as `state_dir_full`, and saved as soon as there is room
    /// (`Store::save_withdrawal` makes sure the next start allows no more meanwhile).
    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, AppError> {
        let _one = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.settings();
        let new = old.apply(patch);
        if old.only_withdraws(&new) {
            self.live().settings = new.clone();
            self.settings_changed(&old, &new);
            self.save_withdrawal();
        } else {
            let c = self.choices_with(|c| c.settings = new.clone());
            if let Err(e) = self.store.save_choices(&c) {
                return Err(self.withdraw_part_of(&old, &new, &e));
            }
            self.live().settings = new.clone();
            self.choices_saved();
            self.settings_changed(&old, &new);
        }
        Ok(new)
    }

    /// A change that widens could not be saved: refused, but the part of it that narrows
    /// (`{"auto_upload": false, "network": "any"}`: consent off) is a withdrawal, and takes
    /// effect whatever the disk says. Answers 507 naming the fields not applied (500 for
    /// another failure, which applies nothing).
    fn withdraw_part_of(&self, old: &Settings, new: &Settings, e: &store::StoreError) -> AppError {
        let refused = AppError::no_room("the change of settings", e);
        if !e.is_disk_full() {
            return refused;
        }
        let part = old.withdrawn_part(new);
        if part != *old {
            self.live().settings = part.clone();
            self.settings_changed(old, &part);
            self.save_withdrawal();
        }
        let mut refused = refused;
        refused.message = format!(
            "{}. Not applied: {}{}",
            refused.message,
            part.differing_fields(new).join(", "),
            if part != *old {
                format!(
                    "; applied (they allow less): {}",
                    old.differing_fields(&part).join(", ")
                )
            } else {
                String::new()
            }
        );
        refused
    }

    /// Enforces a change of settings already in force: stops what may no longer run, wakes
    /// what may.
    fn settings_changed(&self, old: &Settings, new: &Settings) {
        self.client.set_max_rate(new.max_rate_bytes_per_sec());
        if old.max_rate_kib_per_sec != new.max_rate_kib_per_sec {
            tracing::info!(
                max_rate_kib_per_sec = new.max_rate_kib_per_sec,
                "the user changed the upload rate cap"
            );
        }
        if old.auto_upload != new.auto_upload {
            tracing::info!(auto_upload = new.auto_upload, "the user changed consent");
        }
        if old.free_space != new.free_space {
            tracing::info!(
                free_space = new.free_space.as_str(),
                "the user changed freeing space"
            );
            if new.free_space == crate::settings::FreeSpace::Off {
                self.stop_freeing("the user switched freeing space off");
            } else {
                self.kick_freeing();
            }
        }
        self.reevaluate();
        // The gate's verdict depends on the settings: have the conditions loop decide anew.
        self.recheck.notify_one();
        // What may start does too (the data types, the network): the scheduler sleeps until
        // told (issue 29), so it is told.
        self.kick.notify_one();
    }

    /// `POST /v1/pause` (a withdrawal: in force at once, saved as soon as there is room) /
    /// `POST /v1/resume` (a grant: refused if it cannot be saved). Kept across restarts.
    pub fn set_paused(&self, paused: bool) -> Result<(), AppError> {
        let _one = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        if paused {
            self.live().paused = true;
        } else {
            let c = self.choices_with(|c| c.paused = false);
            self.store
                .save_choices(&c)
                .map_err(|e| AppError::no_room("resuming uploads", &e))?;
            self.live().paused = false;
            self.choices_saved();
        }
        tracing::info!(
            paused,
            "the user {} uploads",
            if paused { "paused" } else { "resumed" }
        );
        self.reevaluate();
        if paused {
            self.save_withdrawal();
        } else {
            self.kick.notify_one();
        }
        Ok(())
    }

    /// The user's choices in force, with `change` made.
    fn choices_with(
        &self,
        change: impl FnOnce(&mut store::ledger::Choices),
    ) -> store::ledger::Choices {
        let live = self.live();
        let answers = self.activity.metered_answers();
        let mut c = store::ledger::Choices {
            settings: live.settings.clone(),
            paused: live.paused,
            metered: Some(answers.global),
            metered_networks: records_of(&answers.networks),
        };
        change(&mut c);
        c
    }

    /// Saves the choices in force after a withdrawal; what the disk had no room for is
    /// shown in `attention` and saved by [`App::keep_saved`].
    fn save_withdrawal(&self) {
        let c = self.choices_with(|_| {});
        match self.store.save_withdrawal(&c) {
            Ok(()) => self.choices_saved(),
            Err(e) => {
                self.store_failed(&e);
                self.live().choices_unsaved = Some(e.to_string());
                self.resave.notify_one();
            }
        }
    }

    /// The choices in force are saved.
    fn choices_saved(&self) {
        let mut live = self.live();
        if live.choices_unsaved.take().is_some() {
            tracing::info!("the user's choices are saved");
        }
    }

    /// Saves what a full disk had no room for (the user's choices, the rest of an unpairing)
    /// every [`RESAVE_EVERY`] until it is saved; idle otherwise. Runs until shutdown.
    pub async fn keep_saved(&self) {
        loop {
            let pending = {
                let live = self.live();
                live.choices_unsaved.is_some() || live.unpair_unfinished
            };
            let wait = async {
                if pending {
                    tokio::time::sleep(RESAVE_EVERY).await;
                } else {
                    self.resave.notified().await;
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = wait => {}
            }
            self.save_again();
        }
    }

    fn save_again(&self) {
        if self.live().choices_unsaved.is_some() {
            let _one = self.choices.lock().unwrap_or_else(|e| e.into_inner());
            let c = self.choices_with(|_| {});
            match self.store.save_choices(&c) {
                Ok(()) => self.choices_saved(),
                Err(e) => self.live().choices_unsaved = Some(e.to_string()),
            }
        }
        if self.live().unpair_unfinished {
            if let Err(e) = self.finish_unpairing() {
                tracing::debug!(error = %e, "the unpairing is not finished yet");
            }
        }
    }

    /// `PUT /v1/network` from the app: whether the Wi-Fi is metered (`None`: the daemon decides
    /// from the firmware's flag and the network's signs). When a Wi-Fi network's name is known
    /// ([`uplink::answered_network`]) the answer is for that network only, as phones remember
    /// it, and wins over the answer for every network there, `None` included ("the daemon
    /// decides here"); without a name (no wpa_supplicant socket, Ethernet) it is the answer for
    /// every network, as before ([`crate::conditions::metered::Answers::apply`]).
    ///
    /// `shown_ssid`: the network's name the app showed the user (`status.uplink.network_name
    /// .ssid`); when given and the camera is not on that network now (it moved since the app
    /// read the status, or no name is known), nothing changes: 409 `network_changed`.
    ///
    /// Returns the answer now in force on that network (`status.uplink.metered_override`) and
    /// the network it was for (`None`: every network).
    ///
    /// Kept with the user's choices, then enforced: a metered Wi-Fi under `wifi`/`unmetered`
    /// stops the upload in flight at the next conditions read, which this triggers at once.
    /// "Metered" narrows what may be sent, so it is a withdrawal: in force at once and saved
    /// like one (`Store::save_withdrawal`: it holds across a restart on a full disk); "not
    /// metered" or "you decide" is a grant, refused when it cannot be saved.
    pub fn set_metered(
        &self,
        metered: Option<bool>,
        shown_ssid: Option<&str>,
    ) -> Result<(Option<bool>, Option<uplink::NetworkName>), AppError> {
        let _one = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let network =
            uplink::answered_network(self.live().snapshot.as_ref(), &self.client.binding());
        if let Some(shown) = shown_ssid {
            if network.as_ref().map(|(_, n)| n.ssid.as_str()) != Some(shown) {
                // The names stay out of the message, which the log and the bundle may carry.
                return Err(AppError::conflict(
                    "network_changed",
                    "`ssid` does not name the Wi-Fi network the camera is on now (it moved, or \
                     its name cannot be read): nothing was changed; read the status again and \
                     ask about the network it names",
                ));
            }
        }
        let (ssid, shown) = network.unzip();
        let mut answers = self.activity.metered_answers();
        answers.apply(ssid.as_ref(), metered);
        let in_force = answers.for_network(ssid.as_ref());
        if metered == Some(true) {
            self.activity.set_metered_answers(answers);
            self.save_withdrawal();
        } else {
            let c = self.choices_with(|c| {
                c.metered = Some(answers.global);
                c.metered_networks = records_of(&answers.networks);
            });
            self.store
                .save_choices(&c)
                .map_err(|e| AppError::no_room("the Wi-Fi's metering", &e))?;
            self.activity.set_metered_answers(answers);
            self.choices_saved();
        }
        // The network's name stays out of the log, which the support bundle carries.
        tracing::info!(
            ?metered,
            per_network = shown.is_some(),
            "the app set whether the Wi-Fi is metered"
        );
        self.recheck.notify_one();
        Ok((in_force, shown))
    }

    /// `PUT /v1/recording` from the camera firmware.
    pub fn set_recording(&self, active: bool) {
        self.activity.set_recording(active);
        if active {
            self.stop_freeing("the camera records");
        }
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
        // A path under a mount point with no card behind it names the camera's own flash, not
        // a file on the card: nothing is queued from there.
        if !crate::scan::CardRoot::of(&self.config.media).present() {
            return Err(AppError::conflict(
                "media_unavailable",
                "the memory card is missing or unreadable: insert it, then ask again",
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
            let kind = self.filter().classify(&sp).ok_or_else(|| {
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
            let card = self.card().serial;
            let (id, outcome) = match self.store.enqueue_manual(&f, card.as_deref())? {
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
        let card = self.card().serial;
        match self
            .store
            .upsert_with_hint(files, card.as_deref(), |_| true)
        {
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

    /// Queues files the watcher saw written, settled by their content (store/identity.rs):
    /// an edit in place that kept name, size and stamp is a new version.
    pub fn enqueue_checked(&self, files: &[Checked]) -> Result<usize, store::StoreError> {
        if files.is_empty() {
            return Ok(0);
        }
        let card = self.card().serial;
        match self.store.settle_contents(files, card.as_deref()) {
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

    /// The card in the slot (its serial, label, read-only), as the watcher last read it.
    pub fn card(&self) -> Card {
        self.live().card.clone()
    }

    /// The watcher read the card that appeared. Its label is kept by serial, so that while it
    /// is out the files waiting for it name it as the user knows it.
    /// A full scan of the card starts: until it ends, what is on the card is not known (a file
    /// written into a folder the walk already passed waits for the scan's end), so the card is
    /// not safe to format.
    pub fn scan_started(&self) {
        self.live().card_scanned = false;
    }

    /// Whether the card is watched (inotify): without it a new photo is seen only at the next
    /// rescan, and the card is never said to be safe to format.
    pub fn set_watching(&self, watching: bool) {
        self.live().card_watched = watching;
    }

    pub fn set_card(&self, card: Card) {
        if let (Some(serial), Some(label)) = (&card.serial, &card.label) {
            let key = format!("{CARD_LABEL_KEY}{serial}");
            if let Err(e) = self.store.set_kv(&key, Some(label)) {
                tracing::warn!(error = %e, "cannot remember the card's label");
            }
        }
        let mut live = self.live();
        // A card (re)appeared: what is on it is known once it has been scanned.
        live.card_scanned = false;
        if live.card != card {
            tracing::info!(serial = ?card.serial, label = ?card.label, read_only = card.read_only, "the card in the slot");
            live.card = card;
        }
    }

    /// The watcher's count of files still being written (or settled but not queued yet).
    pub fn set_settling(&self, files: u64) {
        self.live().settling = files;
    }

    /// How the card with `serial` is named to the user: its label when last seen, else its
    /// serial.
    pub fn card_name(&self, serial: Option<&str>) -> Option<String> {
        let serial = serial?;
        let label = self
            .store
            .get_kv(&format!("{CARD_LABEL_KEY}{serial}"))
            .ok()
            .flatten();
        Some(label.unwrap_or_else(|| serial.to_string()))
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

    /// The server asked (429/503 with Retry-After) that nothing be sent before `at` (unix
    /// seconds): no upload starts before then, whichever file. Kept across restarts.
    pub fn server_busy_until(&self, at: i64) {
        let later = {
            let mut live = self.live();
            let later = at > live.server_not_before;
            live.server_not_before = live.server_not_before.max(at);
            later
        };
        if later {
            if let Err(e) = self
                .store
                .set_kv(SERVER_NOT_BEFORE_KEY, Some(&at.to_string()))
            {
                tracing::warn!(error = %e, "cannot record the server's Retry-After");
            }
        }
    }

    /// The server refused the device's certificate (`Some(why)`), or an upload went through
    /// (`None`). Memory only: a restart tries again and finds out anew.
    pub fn set_certificate_refused(&self, why: Option<String>) {
        self.live().certificate_refused = why;
    }

    /// Whether a `Retry-After` answered now continues the outage of the last one: the hold
    /// that one set ended at most [`OUTAGE_GOES_ON_WITHIN`] seconds ago, so this request was
    /// the camera's first after it. Then its next wait keeps the phase the first one drew
    /// ([`crate::upload::retry::Backoff::delay`]); a camera that has been uploading since (a
    /// new outage met mid-upload, by a whole fleet at once) draws a phase anew. Read from the
    /// hold's end, which is kept across restarts.
    pub fn server_busy_again(&self, now_unix: i64) -> bool {
        let until = self.live().server_not_before;
        until > 0 && now_unix >= until && now_unix - until <= OUTAGE_GOES_ON_WITHIN
    }

    /// Before this unix second no upload starts (the server's Retry-After; 0: none).
    pub fn server_not_before(&self) -> i64 {
        self.live().server_not_before
    }

    /// A full scan of the card in the slot against the queue ([`crate::scan::scan`], which
    /// writes what it found in batches); then whoever waits is woken ([`App::scanned`]), or a
    /// failure shown in `attention`. Blocking: the watcher runs it on a blocking thread.
    pub fn scan_card(&self) -> Result<crate::scan::Report, store::StoreError> {
        let media = &self.config.media;
        let res = crate::scan::scan(
            crate::scan::CardRoot::of(media),
            &media.filter,
            &self.store,
            std::time::Duration::from_secs(media.settle_secs),
            self.card().serial.as_deref(),
        );
        match &res {
            Ok(report) => self.scanned(report),
            Err(e) => self.store_failed(e),
        }
        res
    }

    /// A full scan finished.
    pub fn scanned(&self, report: &crate::scan::Report) {
        if report.queued + report.dropped > 0 {
            self.store_ok();
        }
        // A walk the card left (or was not there for) counts nothing as unreadable: the card's
        // absence is `media_unavailable`, not entries that could not be read.
        if !report.card_gone {
            let mut live = self.live();
            live.unreadable_on_card = report.unreadable;
            live.skipped = crate::wire::Skipped {
                scanned_at: Some(crate::clock::now_unix()),
                ..report.skipped.clone()
            };
            live.card_scanned = true;
            // The files it found still being written go to the watcher's settler after this
            // returns: counted now, so the card never reads as safe in between (the watcher's
            // next count replaces this one).
            live.settling += report.recent.len() as u64;
        }
        if report.queued > 0 {
            self.queued();
        }
        if report.dropped > 0 {
            self.reevaluate();
        }
        self.kick_freeing();
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
    pub fn set_conditions(&self, snapshot: Snapshot, mut verdict: Verdict, mut auto_open: bool) {
        let opened = {
            let mut live = self.live();
            reach::apply(&mut live, &snapshot, &mut verdict, &mut auto_open);
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
            if !available {
                // What the last scan could not read was on the card that left; the next scan
                // of a card put back counts again.
                live.unreadable_on_card = 0;
                live.skipped = crate::wire::Skipped::default();
                live.card_scanned = false;
            }
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

    /// The data plan's count: takes the bytes the uploads sent over cellular since the last
    /// call, adds them to today's count in the store (a new local day starts from zero; a
    /// clock or time-zone change back to an earlier date keeps what was sent, see
    /// [`crate::store::Store::add_cellular_use`]), and returns what counts against today.
    /// Called by the conditions loop at each reading. Bytes the store could not take (a full
    /// state disk) go back to the throttle and are recorded by the next write that succeeds.
    pub fn count_cellular_use(&self) -> u64 {
        // A clock not yet set (a camera without an RTC battery boots at 1970) names no day:
        // counted there, today's bytes would be moved to 1970, and the day the clock is set
        // to would find a fresh budget. The bytes stay in the throttle until it is set.
        if !crate::clock::is_set() {
            return self.live().cellular_bytes_today;
        }
        let Some(local) = crate::clock::local_now() else {
            return self.live().cellular_bytes_today;
        };
        let sent = self.client.throttle().take_counted();
        match self.store.add_cellular_use(local.day, sent) {
            Ok(total) => {
                let mut live = self.live();
                (live.cellular_bytes_today, live.cellular_recorded) = (total, total);
                total
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the cellular data used");
                self.store_failed(&e);
                // Given back, so the next write that succeeds records them (kept here only,
                // they would be gone once it did, and the day's budget fresh for them).
                // Meanwhile they count on top of the last count recorded.
                self.client.throttle().give_back_counted(sent);
                let mut live = self.live();
                live.cellular_bytes_today = live.cellular_recorded.saturating_add(sent);
                live.cellular_bytes_today
            }
        }
    }

    /// The data plan the gate worked out at this reading ([`crate::gate::data_plan`]),
    /// enforced at the pacing point every PATCH body goes through.
    pub fn set_data_plan(&self, plan: crate::gate::DataPlan) {
        self.client
            .throttle()
            .set_data_plan(plan.metering, plan.left);
    }

    /// Binds the upload connections to the gate's uplink (`None`: no way out is allowed).
    pub fn bind_uplink(&self, link: Option<&crate::conditions::Link>) -> Binding {
        self.client.rebind(link)
    }

    /// Moves the database's write-ahead log into it (at shutdown).
    pub fn checkpoint(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(error = %e, "final database checkpoint failed");
        }
    }

    /// Drops the history older than `state.history_days` (the daemon's housekeeping).
    pub fn purge_history(&self) {
        let days = self.config.state.history_days;
        match self.store.purge_history(days) {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, days, "purged old history"),
            Err(e) => tracing::warn!(error = %e, "cannot purge old history"),
        }
    }

    /// The conditions loop's reading of the wall clock: whether it is set. Uploads start
    /// once it is.
    pub fn set_clock_set(&self, set: bool) {
        let changed = std::mem::replace(&mut self.live().clock_set, set) != set;
        if changed {
            if set {
                tracing::info!("the wall clock is set: uploads may start");
            } else {
                tracing::warn!(
                    now = crate::clock::now_unix(),
                    "the wall clock is not set (before this release): no upload until it is, \
                     since no certificate could be verified"
                );
            }
            self.reevaluate();
            self.kick.notify_one();
        }
    }

    /// Whether the media root is there.
    pub fn media_available(&self) -> bool {
        self.live().media_available
    }

    /// What the scheduler may start now: `(allow_auto, allow_manual, auto kinds)`; `None` when
    /// nothing may start at all.
    pub fn permits(&self) -> Option<(bool, bool, Vec<Kind>)> {
        let live = self.live();
        permits_of(&live)
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
}

/// The account file, and whether the account is known to be gone (no file, or a damaged one
/// erased), as opposed to unreadable for now.
fn load_account(config: &Config) -> (Option<Account>, bool) {
    // Whether the account is known to be gone (no file, or a damaged one erased), as
    // opposed to unreadable for now.
    let mut gone = false;
    let account = match credentials::load(&config.state.dir) {
        Ok(a) => {
            gone = a.is_none();
            a
        }
        // A damaged account file (a power cut between zero-filling and unlinking it while
        // unpairing, or a bad flash block) must not keep the daemon from starting: the
        // app could not even pair again. It is erased, and the device is unpaired.
        Err(e @ credentials::CredentialsError::Invalid { .. }) => {
            tracing::error!(error = %e, "the account file is damaged; erasing it: the device is unpaired until the app pairs again");
            if let Err(e) = credentials::erase(&config.state.dir) {
                tracing::error!(error = %e, "cannot erase the damaged account file");
            }
            gone = true;
            None
        }
        // Unreadable (an I/O error): unpaired for now, the file left for the next start.
        Err(e) => {
            tracing::error!(error = %e, "the account file cannot be read: the device is unpaired for now");
            None
        }
    };
    (account, gone)
}

/// The account's status as last saved (a 401 or 402 outlives a restart).
fn saved_account_status(store: &Store) -> Result<AccountStatus, store::StoreError> {
    Ok(match store.get_kv(AccountStatus::KEY)?.as_deref() {
        Some("unauthorized") => AccountStatus::Unauthorized("the server refused the token".into()),
        Some("subscription_inactive") => {
            AccountStatus::SubscriptionInactive("the subscription is inactive".into())
        }
        _ => AccountStatus::Ok,
    })
}

/// Forgets the upload URLs created at another endpoint than `account`'s.
fn forget_urls_elsewhere(store: &Store, config: &Config, a: &Account) {
    // Upload URLs created at another endpoint (the maker moved the service, or the account's
    // region changed while the daemon was down) are never resumed, terminated or asked
    // about there: that would send the bearer token to the old host.
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

fn permits_of(live: &Live) -> Option<(bool, bool, Vec<Kind>)> {
    if !live.clock_set
        || live.paused
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

/// The app's "metered" answers as the choices file keeps them, made the daemon's.
fn answers_of(
    global: Option<bool>,
    networks: Vec<store::ledger::MeteredNetwork>,
) -> crate::conditions::metered::Answers {
    crate::conditions::metered::Answers {
        global,
        networks: networks
            .into_iter()
            .map(|n| crate::conditions::metered::NetworkAnswer {
                ssid: Ssid::from_key(&n.ssid),
                metered: n.metered,
            })
            .collect(),
    }
}

/// The per-network answers as the choices file keeps them.
fn records_of(
    networks: &[crate::conditions::metered::NetworkAnswer],
) -> Vec<store::ledger::MeteredNetwork> {
    networks
        .iter()
        .map(|n| store::ledger::MeteredNetwork {
            ssid: n.ssid.key().to_string(),
            metered: n.metered,
        })
        .collect()
}
