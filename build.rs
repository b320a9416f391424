//! Puts the git commit in `cambackup --version` (`CAMBACKUP_VERSION`, e.g. `0.1.0 (1a2b3c4)`),
//! so a support request names the exact build. From a tarball (no git, or a checkout that is not
//! this crate's: a Yocto or Buildroot work dir inside another repository) it says `unknown`;
//! `CAMBACKUP_COMMIT` in the environment overrides it for builds that know their commit.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CAMBACKUP_COMMIT");
    let dir =
        std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let commit = std::env::var("CAMBACKUP_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Only this crate's own repository: not one it was unpacked inside.
            let top = git(&dir, &["rev-parse", "--show-toplevel"])?;
            if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
                return None;
            }
            // Rebuilt when HEAD moves: HEAD itself (a branch switch) and the branch's ref.
            for name in ["HEAD", "packed-refs"] {
                watch(&dir, name);
            }
            if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
                watch(&dir, &branch);
            }
            git(&dir, &["rev-parse", "--short", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "cargo:rustc-env=CAMBACKUP_VERSION={} ({commit})",
        std::env::var("CARGO_PKG_VERSION").expect("cargo sets it")
    );
}

/// Reruns the build script when a file of git's changes (only files that exist: cargo reruns
/// on every build for a missing one).
fn watch(dir: &Path, name: &str) {
    if let Some(p) = git(
        dir,
        &["rev-parse", "--path-format=absolute", "--git-path", name],
    ) {
        if Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
