//! `cambackup daemon`: wires the tasks together and runs them until SIGTERM/SIGINT.
//!
//! Tasks: the watcher (card → queue), the conditions loop (device → gate), the scheduler
//! (queue → tus), the control server (app ↔ daemon), freeing space, and housekeeping.
//! Shutdown is one `CancellationToken`: every task watches it, transfers save their offset,
//! and the process exits within [`SHUTDOWN_GRACE`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;
use crate::scheduler;
use crate::store::Store;
use crate::upload::bind::Binding;
use crate::upload::tus;
use crate::{conditions, gate, watch};

/// How long shutdown may take before the remaining tasks are abandoned (systemd waits longer).
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

/// Device reading while uploading or holding down: losing a condition must stop an upload
/// within 2 s, and the temperature and load average tell nobody when they change.
const POLL_ACTIVE: Duration = Duration::from_secs(1);
/// Device reading while work waits on a condition only a timer sees (too hot, the load):
/// waiting work starts within a few seconds of it clearing.
const POLL_WAITING: Duration = Duration::from_secs(2);
/// Device reading at rest, when the kernel, inotify or the daemon itself tells every change
/// that matters ([`conditions::changes`]): the slow refresh of what nothing tells and nothing
/// waits for (the temperature and load shown in the status), and a net under the notifiers.
const POLL_REST: Duration = Duration::from_secs(300);
/// Housekeeping (history retention) interval.
const HOUSEKEEPING: Duration = Duration::from_secs(3600);

/// Sets up logging: stderr (journald picks it up), level from `CAMBACKUP_LOG` (default info),
/// and the same records kept in memory for the support bundle (`logring`).
///
/// The filter is a list of `LEVEL` or `TARGET=LEVEL` (`debug`, `cambackup::upload=debug,info`),
/// read with `tracing_subscriber`'s `Targets`: what `EnvFilter` offered beyond that (span and
/// field filters) nobody used, and its regex engine was 26 KiB of the arm64 binary over the
/// 6 MiB flash goal. One that does not parse falls back to `info`, and says so.
pub fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    let given = std::env::var("CAMBACKUP_LOG").ok();
    let parsed = given.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(t)) => t.clone(),
        _ => Targets::new().with_default(LevelFilter::INFO),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(crate::logring::layer());
    let _ = tracing::subscriber::set_global_default(subscriber);
    if let (Some(given), Some(Err(e))) = (given, parsed) {
        tracing::warn!(CAMBACKUP_LOG = %given, error = %e, "CAMBACKUP_LOG is not a list of LEVEL or TARGET=LEVEL; logging at info");
    }
}

/// Runs the daemon with a loaded config. Returns the process exit code.
pub fn run(config: Config) -> i32 {
    // Everything the daemon creates (database, credentials, socket dir) is private unless it
    // says otherwise (the socket is chmod'ed to 0660 explicitly).
    unsafe { libc::umask(0o077) };
    // One thread for all tasks: the daemon's work is I/O-bound, and a second worker thread
    // mostly woke up to find nothing to steal (docs/PERFORMANCE.md: wake-ups at rest). File
    // reads, SQLite-heavy scans and inotify use the blocking pool and notify's thread.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(main(config));
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn main(config: Config) -> i32 {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %config.file.display(), "starting");
    // Before anything in the directory is read or written: a second daemon changes nothing.
    let _lock = match crate::store::DirLock::acquire(&config.state.dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let store = match Store::open(&config.state.dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the database");
            return 1;
        }
    };
    match store.recover_interrupted() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            items = n,
            "resuming uploads interrupted by a crash or power cut"
        ),
        Err(e) => tracing::error!(error = %e, "cannot recover interrupted uploads"),
    }
    let client = match tus::Client::new(&config.cloud) {
        // No connection until the gate approves an interface (the conditions loop rebinds).
        Ok(c) => {
            c.rebind(None);
            c
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the upload client");
            return 1;
        }
    };
    let app = match App::new(config, store, client) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the daemon's state");
            return 1;
        }
    };
    let listener = match crate::control::server::bind(&app.config().control) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the control socket");
            return 1;
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch::run(app.clone()));
    tasks.spawn(conditions_loop(app.clone()));
    tasks.spawn(scheduler::run(app.clone()));
    tasks.spawn(housekeeping(app.clone()));
    tasks.spawn(crate::freeing::run(app.clone()));
    {
        let app = app.clone();
        tasks.spawn(async move { app.keep_saved().await });
    }
    {
        let app = app.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::control::server::serve(listener, app.clone()).await {
                tracing::error!(error = %e, "the control server stopped");
            }
        });
    }

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(socket = %app.config().control.socket.display(), "ready");
    wait_for_signal(&app).await;

    tracing::info!("shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    app.shutdown().cancel();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    loop {
        match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!("some tasks did not stop in time; exiting anyway");
                tasks.abort_all();
                break;
            }
        }
    }
    app.checkpoint();
    tracing::info!("stopped");
    0
}

/// Waits for SIGTERM or SIGINT, sending the systemd watchdog ping meanwhile, but only while
/// every loop is alive: a hung loop stops the pings and systemd restarts the daemon.
async fn wait_for_signal(app: &App) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let watchdog = watchdog_interval();
    loop {
        let tick = watchdog.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = tokio::time::sleep(tick) => {
                if watchdog.is_some() {
                    match app.health(Duration::from_secs(60)) {
                        Ok(()) => { let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]); }
                        Err(e) => tracing::error!(problem = %e, "withholding the watchdog ping"),
                    }
                }
            }
        }
    }
}

/// Half the systemd watchdog timeout, if the unit asked for one. Like libsystemd's
/// `sd_watchdog_enabled`, `WATCHDOG_PID` is checked only when set (sd-notify's version requires
/// it, which a supervisor other than systemd may not set).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Reads the device and asks the gate when something changed: the kernel or inotify said so
/// ([`conditions::Changes`]), the app asked (settings, recording, new files, an upload
/// starting), a media write came while the camera counted as idle, or a timer ran out
/// ([`next_read`]: every second while uploading, at the next schedule edge, ...). The auto
/// gate opens only after it has held for `hold_down_secs`, so a bouncing charger contact does
/// not start and abort uploads; it closes at once.
async fn conditions_loop(app: Arc<App>) {
    let cfg = app.config().conditions.clone();
    let hold_down = Duration::from_secs(cfg.hold_down_secs);
    let mut reader = conditions::Reader::new(&cfg);
    let mut changes = conditions::Changes::open(&cfg);
    let mut hold = gate::HoldDown::new(hold_down);
    let mut last_verdict = None;
    // The approved interface and the families it carries, as the client is bound now.
    let mut bound: Option<(String, Vec<conditions::Family>)> = None;
    let mut last_binding = Binding::Refused;
    // Whether this read was only timed: nothing told the loop that the device changed.
    let mut timed = false;
    loop {
        app.beat("conditions");
        // Before the read: what changes between the two is told again.
        changes.rewatch();
        let mut snapshot = reader.read(app.activity(), !timed).await;
        let settings = app.settings();
        snapshot.cellular_bytes_today = app.count_cellular_use();
        let verdict = gate::decide(&snapshot, &settings, &cfg);
        let link = verdict
            .uplink
            .as_ref()
            .and_then(|i| snapshot.links.iter().find(|l| &l.interface == i));
        let want = link.map(|l| (l.interface.clone(), l.families.clone()));
        app.set_data_plan(gate::data_plan(&verdict, &snapshot, &settings));
        // An approved interface the client could not bind to (it vanished between the read and
        // the bind, or has no address yet for the fallback) is tried again at the next read.
        let unbindable = want.is_some() && last_binding == Binding::Refused;
        if want != bound || unbindable {
            if want != bound {
                // Open connections keep the binding they were made with: stop the uploads in
                // flight now, so that nothing more goes out of the old way; they resume by
                // HEAD over the new one if it is allowed.
                app.stop_uploads("the interface uploads may use changed");
            }
            let binding = app.bind_uplink(link);
            if binding != last_binding {
                match &binding {
                    Binding::Address { interface, addr } => tracing::warn!(
                        interface, %addr,
                        "the kernel refuses SO_BINDTODEVICE (Linux < 5.7 without CAP_NET_RAW): \
                         upload connections are bound to the interface's address instead, \
                         which holds only while it carries the default route (docs/uplink.md)"
                    ),
                    Binding::Refused if want.is_some() => tracing::warn!(
                        uplink = ?verdict.uplink,
                        "cannot bind upload connections to the approved interface; no uploads \
                         until it can be (tried again at each change of the network)"
                    ),
                    b => {
                        tracing::info!(uplink = ?verdict.uplink, binding = ?b, "upload connections are bound anew")
                    }
                }
                last_binding = binding;
            }
            bound = want;
        }
        let now = Instant::now();
        let auto_open = hold.update(verdict.auto_allowed(), now);
        if last_verdict.as_ref() != Some(&verdict) {
            tracing::info!(auto_blocked_by = ?verdict.auto, manual_blocked_by = ?verdict.manual, "the gate's answer changed");
            last_verdict = Some(verdict.clone());
        }
        let holding = hold.opens_at().is_some() && !auto_open;
        let clock_set = crate::clock::is_set();
        let wait = next_read(&Moment {
            active: !app.in_flight().is_empty() || holding,
            waiting: app.has_waiting_work(),
            verdict: &verdict,
            snapshot: &snapshot,
            settings: &settings,
            cfg: &cfg,
            unix_now: crate::clock::now_unix(),
        });
        // A media write makes an idle camera busy, and nothing else would say so before the
        // next read: listened to while not busy already (the end of busy is timed instead).
        let writes_matter = settings.require_idle
            && snapshot
                .secs_since_media_write
                .is_none_or(|w| w >= cfg.idle_secs);
        app.set_conditions(snapshot, verdict, auto_open);
        app.set_clock_set(clock_set);
        app.rest("conditions");
        timed = false;
        tokio::select! {
            _ = app.shutdown().cancelled() => return,
            _ = tokio::time::sleep(wait) => timed = true,
            _ = app.recheck_requested() => {}
            _ = changes.changed() => {}
            _ = app.activity().written(), if writes_matter => {}
        }
    }
}

/// What [`next_read`] looks at.
struct Moment<'a> {
    /// Uploading, or holding down.
    active: bool,
    /// Queued work waits (for conditions, a back-off or a slot).
    waiting: bool,
    verdict: &'a gate::Verdict,
    snapshot: &'a conditions::Snapshot,
    settings: &'a crate::settings::Settings,
    cfg: &'a crate::config::Conditions,
    unix_now: i64,
}

/// How long the conditions loop may sleep before it reads the device again, if nothing tells
/// it sooner. Every condition the notifiers see (power, network, the flag files, the app's
/// word, the clock being set or its zone changed) needs no timer; the others do, only while
/// they can hold up work: the temperature and the load (no notice on a real kernel), and time
/// itself (the end of `busy` after a media write, the schedule's next edge, the data plan's
/// new day).
fn next_read(m: &Moment) -> Duration {
    if m.active {
        return POLL_ACTIVE;
    }
    if !m.waiting {
        return POLL_REST;
    }
    let s = m.snapshot;
    // Seconds until the local minute `minutes` from now begins (local offsets are whole
    // minutes), and one more so the read lands inside it.
    let minutes_away = |minutes: u16| {
        Duration::from_secs(
            (u64::from(minutes) * 60).saturating_sub(m.unix_now.rem_euclid(60) as u64) + 1,
        )
    };
    let mut wait = POLL_REST;
    for block in m.verdict.auto.iter().chain(&m.verdict.manual) {
        let until = match block {
            gate::Block::TooHot => POLL_WAITING,
            gate::Block::Busy => {
                let loaded = matches!((s.load, m.cfg.max_load), (Some(l), Some(max)) if l > max);
                match s.secs_since_media_write {
                    Some(w) if w < m.cfg.idle_secs && !loaded => {
                        Duration::from_secs(m.cfg.idle_secs - w + 1)
                    }
                    _ => POLL_WAITING,
                }
            }
            gate::Block::OutsideSchedule => {
                gate::schedule_changes_in(&m.settings.schedule, s.local_minute)
                    .map_or(POLL_REST, minutes_away)
            }
            gate::Block::DataBudgetUsed => s
                .local_minute
                .map_or(POLL_REST, |now| minutes_away(1440 - now)),
            // Told by the kernel, inotify or the app.
            _ => POLL_REST,
        };
        wait = wait.min(until);
    }
    wait.max(POLL_ACTIVE)
}

async fn housekeeping(app: Arc<App>) {
    loop {
        app.purge_history();
        tokio::select! {
            _ = app.shutdown().cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
        }
    }
}

/// `cambackup check-config`: validates and prints the effective settings. Exit 0 or 2.
pub fn check_config(path: &Path) -> i32 {
    match crate::config::load(path) {
        Ok(c) => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = write!(std::io::stdout().lock(), "{c}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::{Network, Snapshot};
    use crate::gate::{Block, Verdict};
    use crate::settings::{Settings, Window};

    fn snapshot() -> Snapshot {
        Snapshot {
            charging: Some(true),
            battery_percent: Some(80),
            network: Network::Wifi,
            interface: Some("wlan0".into()),
            links: Vec::new(),
            temp_c: Some(40.0),
            load: Some(0.1),
            recording: false,
            secs_since_media_write: None,
            local_minute: Some(12 * 60),
            cellular_bytes_today: 0,
        }
    }

    /// At rest nothing is timed but the slow refresh; a timer runs only for what nothing
    /// tells, and only while work waits on it.
    #[test]
    fn the_next_read_is_timed_only_for_what_nothing_tells() {
        const S: fn(u64) -> Duration = Duration::from_secs;
        let cfg = crate::config::Conditions {
            max_load: Some(2.0),
            ..Default::default()
        };
        let night = vec![Window::parse("23:00-06:00").unwrap()];
        type Row = (
            &'static str,
            bool,
            bool,
            Vec<Block>,
            fn(&mut Snapshot),
            Duration,
        );
        let rows: Vec<Row> = vec![
            ("uploading", true, true, vec![], |_| {}, POLL_ACTIVE),
            (
                "nothing waits, gate open",
                false,
                false,
                vec![],
                |_| {},
                POLL_REST,
            ),
            (
                "nothing waits, too hot",
                false,
                false,
                vec![Block::TooHot],
                |_| {},
                POLL_REST,
            ),
            (
                "waits, not charging: the kernel tells",
                false,
                true,
                vec![Block::NotCharging, Block::Offline, Block::Recording],
                |_| {},
                POLL_REST,
            ),
            (
                "waits, too hot",
                false,
                true,
                vec![Block::TooHot],
                |_| {},
                POLL_WAITING,
            ),
            (
                "waits, media written 100 s ago",
                false,
                true,
                vec![Block::Busy],
                |s| s.secs_since_media_write = Some(100),
                S(21),
            ),
            (
                "waits, loaded",
                false,
                true,
                vec![Block::Busy],
                |s| s.load = Some(3.0),
                POLL_WAITING,
            ),
            (
                "waits for the night window (22:58:30)",
                false,
                true,
                vec![Block::OutsideSchedule],
                |s| s.local_minute = Some(22 * 60 + 58),
                S(2 * 60 - 30 + 1),
            ),
            (
                "waits for a new day's budget (23:59:30)",
                false,
                true,
                vec![Block::DataBudgetUsed],
                |s| s.local_minute = Some(1439),
                S(60 - 30 + 1),
            ),
        ];
        for (name, active, waiting, blocks, edit, want) in rows {
            let mut s = snapshot();
            edit(&mut s);
            let verdict = Verdict {
                auto: blocks,
                ..Verdict::default()
            };
            let settings = Settings {
                schedule: night.clone(),
                ..Settings::default()
            };
            let m = Moment {
                active,
                waiting,
                verdict: &verdict,
                snapshot: &s,
                settings: &settings,
                cfg: &cfg,
                unix_now: 29_666_666 * 60 + 30,
            };
            assert_eq!(next_read(&m), want, "{name}");
        }
    }
}
