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

/// Device polling while nothing waits for the conditions: slow, so an idle camera sleeps.
const POLL_IDLE: Duration = Duration::from_secs(10);
/// Device polling while uploading or holding down: losing a condition must stop an upload
/// within 2 s.
const POLL_ACTIVE: Duration = Duration::from_secs(1);
/// Device polling while work waits for conditions: waiting work starts within a few seconds
/// of the conditions coming to hold, at half a wake-up a second.
const POLL_WAITING: Duration = Duration::from_secs(2);
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

/// Reads the device and asks the gate, slowly while idle and every second while uploading or
/// while work waits. The auto gate opens only after it has held for `hold_down_secs`, so a
/// bouncing charger contact does not start and abort uploads; it closes at once.
async fn conditions_loop(app: Arc<App>) {
    let cfg = app.config().conditions.clone();
    let hold_down = Duration::from_secs(cfg.hold_down_secs);
    let mut reader = conditions::Reader::new(&cfg);
    let mut hold = gate::HoldDown::new(hold_down);
    let mut last_verdict = None;
    // The approved interface and the families it carries, as the client is bound now.
    let mut bound: Option<(String, Vec<conditions::Family>)> = None;
    let mut last_binding = Binding::Refused;
    loop {
        let mut snapshot = reader.read(app.activity());
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
        // the bind, or has no address yet for the fallback) is tried again at the next poll.
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
                         until it can be (retried every poll)"
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
        app.set_conditions(snapshot, verdict, auto_open);
        app.set_clock_set(crate::clock::is_set());
        app.beat("conditions");
        let wait = if !app.in_flight().is_empty() || holding {
            POLL_ACTIVE
        } else if app.has_waiting_work() {
            POLL_WAITING
        } else {
            POLL_IDLE
        };
        tokio::select! {
            _ = app.shutdown().cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = app.recheck_requested() => {}
        }
    }
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
