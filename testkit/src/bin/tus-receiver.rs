//! `tus-receiver [--token T] [--port P] [--no-checksum] [--relative-location]`: the test receiver
//! as a process of its own, for benchmarks that must measure the client and the server apart
//! (`benches/upload.sh`), and the local tus server of `examples/try-it/` (`--port`: a fixed port,
//! so that config works as written).
//!
//! It serves until SIGTERM or SIGINT, then deletes what it stored. On stdout, one line each:
//! ```text
//! url http://127.0.0.1:PORT/files/
//! dir /tmp/tus-receiver-XXXX
//! created ID LENGTH UNIX_NANOS       once per upload, when it was created
//! complete ID LENGTH UNIX_NANOS      once per upload, when its last byte is stored
//! ```
//! The receiver writes each PATCH body frame to disk as it arrives (see `testkit::tus`), so a
//! 1 GiB upload costs it frames, not a GiB of memory. It listens on an ephemeral port of
//! 127.0.0.1 (the library's choice; `--port` fixes it); read the port from the `url` line. With
//! `--relative-location` the upload URLs it hands out are paths (`/files/ID`), so a client that
//! reaches it through a proxy keeps talking to the proxy (`benches/slowlink.sh`).

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use testkit::tus::Receiver;
use tokio::signal::unix::{signal, SignalKind};

/// How often completions are looked for; bounds the error of a measured upload time.
const POLL: Duration = Duration::from_millis(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut token = None;
    let mut checksum = true;
    let mut relative = false;
    let mut port = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--token" => token = Some(args.next().context("--token needs a value")?),
            "--port" => {
                let p = args.next().context("--port needs a value")?;
                port = Some(
                    p.parse::<u16>()
                        .with_context(|| format!("--port {p:?}: not a port"))?,
                );
            }
            "--no-checksum" => checksum = false,
            "--relative-location" => relative = true,
            "-h" | "--help" => {
                println!(
                    "usage: tus-receiver [--token TOKEN] [--port PORT] [--no-checksum] [--relative-location]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mut builder = Receiver::builder();
    if let Some(t) = token {
        builder = builder.token(t);
    }
    if !checksum {
        builder = builder.without_checksum();
    }
    if relative {
        builder = builder.relative_location();
    }
    if let Some(p) = port {
        let listener = std::net::TcpListener::bind(("127.0.0.1", p)).with_context(|| {
            format!("cannot listen on 127.0.0.1:{p} (in use? pick another --port)")
        })?;
        builder = builder.listener(listener);
    }
    let receiver = builder.start().await;
    let dir = receiver.data_path("x");
    let mut out = std::io::stdout().lock();
    writeln!(out, "url {}", receiver.url())?;
    writeln!(out, "dir {}", dir.parent().context("data dir")?.display())?;
    out.flush()?;
    drop(out);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (mut created, mut completed) = (HashSet::new(), HashSet::new());
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                for u in receiver.uploads() {
                    let ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
                    if created.insert(u.id.clone()) {
                        println!("created {} {} {ns}", u.id, u.length);
                    }
                    if u.complete && !u.terminated && completed.insert(u.id.clone()) {
                        println!("complete {} {} {ns}", u.id, u.length);
                    }
                }
            }
        }
    }
    // Dropping the receiver stops it and deletes its temp dir.
    drop(receiver);
    Ok(())
}
