//! `cardfs [--ro] [--utc-offset SECS] IMAGE DIR`: serves a FAT32 card image at DIR with
//! testkit's FAT32 driver (testkit/src/cardfs.rs) until DIR is unmounted (`umount DIR`), for
//! benches and for looking at a card by hand. Runs in the foreground; needs root.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut options = testkit::cardfs::Options::default();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ro" => options.read_only = true,
            "--utc-offset" => {
                let Some(secs) = args.next().and_then(|s| s.parse().ok()) else {
                    eprintln!("cardfs: --utc-offset needs seconds east of UTC");
                    return ExitCode::from(2);
                };
                options.utc_offset_secs = secs;
            }
            _ => paths.push(a.into()),
        }
    }
    let [image, dir] = paths.as_slice() else {
        eprintln!("usage: cardfs [--ro] [--utc-offset SECS] IMAGE DIR");
        return ExitCode::from(2);
    };
    let mounted = match testkit::cardfs::mount(image, dir, &options) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "cardfs: mount {} on {}: {e}",
                image.display(),
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    match mounted.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardfs: writing {} at unmount: {e}", image.display());
            ExitCode::FAILURE
        }
    }
}
