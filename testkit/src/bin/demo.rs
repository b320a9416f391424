//! `cargo run -p testkit --bin demo`: cambackup end to end on this machine, nothing to set up.
//!
//! It builds the real `cambackup` binary, fakes a camera (an SD card with photos and videos, a
//! sysfs saying "on charge, on Wi-Fi, cool"), starts a tus server on loopback, runs the daemon
//! against both, pairs an account, switches consent on, and watches the files go up. Then it
//! checks that every file arrived byte for byte with exactly the four metadata fields the
//! contract allows, and prints a summary. Exit 0 on success, 1 with the reason otherwise.
//!
//! Set `CAMBACKUP_BIN` to use an already built binary instead of building one.

use std::env;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use testkit::camera::{FakeCamera, MEDIA_DIR};
use testkit::daemon::Daemon;
use testkit::tus::Receiver;

/// The whole demo must finish within this.
const TIMEOUT: Duration = Duration::from_secs(120);
const USER_ID: &str = "demo-user";
const TOKEN: &str = "demo-token";
const MIB: u64 = 1024 * 1024;

/// The sample media: a morning's worth of shooting, a few MiB each.
const MEDIA: &[(&str, u64)] = &[
    ("SJ_0001.JPG", 3 * MIB + 123_457),
    ("SJ_0002.JPG", 2 * MIB + 734_001),
    ("SJ_0003.JPG", 4 * MIB + 17),
    ("SJ_0004.DNG", 5 * MIB + 655_360),
    ("SJ_0005.JPG", 2 * MIB + 999_999),
    ("SJ_0006.HEIC", MIB + 524_287),
    ("SJ_0007.MP4", 7 * MIB + 262_144),
    ("SJ_0008.MOV", 6 * MIB + 1),
];

/// The only metadata keys an upload may carry (INTERFACE.md section 6).
const METADATA_KEYS: [&str; 4] = ["device_type", "serial_number", "storage_path", "user_id"];

#[tokio::main]
async fn main() -> ExitCode {
    println!("cambackup demo: camera -> daemon -> tus server, all on this machine\n");
    let bin = match cambackup_bin() {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let mut daemon = None;
    let outcome = tokio::time::timeout(TIMEOUT, run(&bin, &mut daemon)).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!(
            "not finished after {} s ({:.0} s elapsed)",
            TIMEOUT.as_secs(),
            started.elapsed().as_secs_f64()
        )),
    };
    match (failure, daemon) {
        (None, Some(mut d)) => {
            d.stop().await;
            ExitCode::SUCCESS
        }
        (None, None) => ExitCode::SUCCESS,
        (Some(why), d) => {
            eprintln!("\n\ndemo failed: {why}");
            if let Some(d) = d {
                let log = d.log();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "\nlast lines of the daemon's log ({}):",
                    d.log_path().display()
                );
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("  {line}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// Every step after the build. The daemon is handed out through `daemon` so that `main` can
/// show its log when a step fails or the time runs out.
async fn run(bin: &Path, daemon: &mut Option<Daemon>) -> Result<()> {
    let camera = FakeCamera::new();
    let mut total = 0;
    for (name, len) in MEDIA {
        camera.write_sample(&format!("{MEDIA_DIR}/{name}"), *len);
        total += len;
    }
    step(&format!(
        "fake camera in {}: {} files, {} on the card; on charge, on Wi-Fi, 35 °C",
        camera.root().display(),
        MEDIA.len(),
        mib(total)
    ));

    let receiver = Receiver::builder().token(TOKEN).start().await;
    step(&format!(
        "tus server at {} (bearer token required)",
        receiver.url()
    ));

    let config = camera.write_config(&receiver.url());
    let d = daemon.insert(Daemon::spawn(bin, &config, &[]));
    d.wait_healthy(testkit::daemon::START_TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)
        .context("starting the daemon")?;
    step(&format!(
        "daemon running, control socket {}",
        d.socket().display()
    ));

    call(
        d,
        "PUT",
        "/v1/account",
        json!({"user_id": USER_ID, "token": TOKEN}),
    )
    .await
    .context("pairing")?;
    step(&format!("paired as {USER_ID:?}"));
    call(d, "PATCH", "/v1/settings", json!({"auto_upload": true}))
        .await
        .context("switching consent on")?;
    step("consent on (auto_upload = true); uploads start once the camera is idle\n");

    let upload_start = Instant::now();
    watch_progress(d, &receiver, MEDIA.len()).await?;
    let upload_time = upload_start.elapsed();

    verify(&camera, &receiver)?;
    let requests = receiver.requests();
    let count = |m: &str| requests.iter().filter(|r| r.method == m).count();
    println!(
        "\nall {} files ({}) arrived byte-identical, each with exactly {}",
        MEDIA.len(),
        mib(total),
        METADATA_KEYS.join(", ")
    );
    println!(
        "{:.1} s from consent to the last byte ({}/s); {} POST, {} PATCH, {} HEAD on the wire",
        upload_time.as_secs_f64(),
        mib((total as f64 / upload_time.as_secs_f64().max(0.001)) as u64),
        count("POST"),
        count("PATCH"),
        count("HEAD")
    );
    Ok(())
}

/// Polls `GET /v1/status` a few times a second and prints what is going up, until the server
/// holds `files` complete uploads.
async fn watch_progress(d: &Daemon, receiver: &Receiver, files: usize) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let done = receiver.completed_uploads().len();
        let (code, status) = d.api("GET", "/v1/status", None).await;
        ensure!(code == 200, "GET /v1/status answered {code}: {status}");
        let line = progress_line(&status, done, files);
        if line != last {
            if tty {
                print!("\r\x1b[K{line}");
                std::io::stdout().flush().ok();
            } else {
                println!("{line}");
            }
            last = line;
        }
        if done >= files {
            if tty {
                println!();
            }
            return Ok(());
        }
        if let Some(state) = status["state"].as_str() {
            // These states need a person; waiting would only run into the timeout.
            if ["unauthorized", "subscription_inactive", "media_unavailable"].contains(&state) {
                bail!("the daemon stopped in state {state:?}: {status}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `[3/8 done] DCIM/100MEDIA/SJ_0004.DNG  2.0 of 5.6 MiB  (48.1 MiB/s)`, or the state and
/// what blocks it when nothing is going up.
fn progress_line(status: &Value, done: usize, files: usize) -> String {
    let current = &status["current"];
    let head = format!("[{done}/{files} done]");
    match current["storage_path"].as_str() {
        Some(path) => {
            let sent = current["bytes_sent"].as_u64().unwrap_or(0);
            let total = current["bytes_total"].as_u64().unwrap_or(0);
            let rate = current["rate_bps"].as_f64().unwrap_or(0.0);
            format!(
                "{head} {path}  {} of {}  ({}/s)",
                mib(sent),
                mib(total),
                mib(rate as u64)
            )
        }
        None => {
            let state = status["state"].as_str().unwrap_or("?");
            match status["blocked_by"].as_array().filter(|b| !b.is_empty()) {
                Some(blocked) => format!("{head} {state}, blocked by {}", json!(blocked)),
                None => format!("{head} {state}"),
            }
        }
    }
}

/// Every file on the card is on the server, byte for byte, with exactly the four metadata
/// fields and the right values.
fn verify(camera: &FakeCamera, receiver: &Receiver) -> Result<()> {
    for (name, _) in MEDIA {
        let rel = format!("{MEDIA_DIR}/{name}");
        ensure!(
            receiver.file_matches(&rel, &camera.media_path(&rel)),
            "{rel}: what the server holds differs from the card"
        );
    }
    for upload in receiver.completed_uploads() {
        let keys: Vec<&str> = upload.metadata.keys().map(String::as_str).collect();
        ensure!(
            keys == METADATA_KEYS,
            "upload {} carries metadata keys {keys:?}, expected exactly {METADATA_KEYS:?}",
            upload.id
        );
        let m = &upload.metadata;
        ensure!(
            m["user_id"] == USER_ID,
            "user_id is {:?}, not {USER_ID:?}",
            m["user_id"]
        );
        ensure!(
            m["device_type"] == "SJ10 Pro" && m["serial_number"] == "TEST0001",
            "device fields are {:?} / {:?}, not the config's",
            m["device_type"],
            m["serial_number"]
        );
    }
    Ok(())
}

/// Calls the control API and fails unless it answers 2xx.
async fn call(d: &Daemon, method: &str, path: &str, body: Value) -> Result<Value> {
    let (code, answer) = d.api(method, path, Some(body)).await;
    ensure!(
        (200..300).contains(&code),
        "{method} {path} answered {code}: {answer}"
    );
    Ok(answer)
}

/// The `cambackup` binary: `CAMBACKUP_BIN`, or built now with the cargo that runs this demo,
/// in the same target dir and profile, so a second run costs nothing.
fn cambackup_bin() -> Result<PathBuf> {
    if let Ok(bin) = env::var("CAMBACKUP_BIN") {
        step(&format!("using CAMBACKUP_BIN={bin}"));
        return Ok(bin.into());
    }
    let exe = env::current_exe().context("locating the demo binary")?;
    let profile_dir = exe.parent().context("demo binary has no parent dir")?;
    let target_dir = profile_dir
        .parent()
        .context("demo binary is not in a target dir")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    step(&format!("building cambackup ({profile} profile)"));
    let status = Command::new(&cargo)
        .args([
            "build",
            "-p",
            "cambackup",
            "--bin",
            "cambackup",
            "--profile",
        ])
        .arg(&profile)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    ensure!(status.success(), "building cambackup failed ({status})");
    let bin = profile_dir.join("cambackup");
    ensure!(bin.exists(), "built, but {} is missing", bin.display());
    Ok(bin)
}

fn step(msg: &str) {
    println!("  * {msg}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}
