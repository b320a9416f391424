//! The `cambackup` binary: the daemon and its command-line client in one (it ships on flash).
//! This file only parses arguments and calls in.

// fuzz/ builds this tree as its library: what only `main` reaches is unused there.
#![cfg_attr(fuzzing, allow(dead_code, unused))]

// A binary crate, not a library: every module is private to it, so the compiler reports any
// item nothing uses (ripgrep's layout).
mod app;
mod card;
mod cli;
mod clock;
mod conditions;
mod config;
mod control;
mod credentials;
mod daemon;
mod digest;
mod durable;
mod events;
mod freeing;
// The parsers' entry points for `cargo fuzz` (fuzz/), and the tests that replay its inputs.
#[cfg(any(test, fuzzing))]
pub mod fuzz_api;
mod gate;
mod logring;
mod media;
mod report;
mod scan;
mod scheduler;
mod secret;
mod settings;
mod space;
mod store;
mod uplink;
mod upload;
mod watch;
mod wire;
mod words;

#[cfg(test)]
mod layering;

use cli::Command;

fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    let code = match cli.command {
        Command::Daemon => {
            daemon::init_logging();
            let path = config::resolve_path(cli.config.as_deref());
            match config::load(&path) {
                Ok(c) => daemon::run(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Command::CheckConfig => daemon::check_config(&config::resolve_path(cli.config.as_deref())),
        _ => cli::run(&cli),
    };
    // Codes are 0, 1 and 2 (README): they fit a u8.
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
