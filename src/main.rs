//! The `cambackup` binary: the daemon and its command-line client in one (it ships on flash).
//! TEMPORARY argument handling until the CLI lands.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_arg = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let path = cambackup::config::resolve_path(config_arg.as_deref());
    let code = match args.first().map(String::as_str) {
        Some("check-config") => cambackup::daemon::check_config(&path),
        Some("daemon") => {
            cambackup::daemon::init_logging();
            match cambackup::config::load(&path) {
                Ok(c) => cambackup::daemon::run(c),
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        _ => {
            eprintln!("usage: cambackup daemon|check-config [--config PATH]");
            2
        }
    };
    std::process::exit(code);
}
