//! Issue 25: the README's sample outputs stay true. The test does what the README's CLI section
//! shows (pair, queue, settings, then history, privacy and status once the files are up) against
//! the real daemon, and compares each README block with what the real CLI printed: numbers,
//! sizes, times and URLs are masked (they depend on the run), everything else must be equal:
//! the columns, the labels, the settings `privacy` lists, the words. A renderer change that
//! makes a README block stale fails here, naming the command.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use testkit::camera::FakeCamera;

use crate::common::{bin, eventually, Rig, TOKEN};

const T: Duration = Duration::from_secs(30);

/// The README's CLI block: `$ cambackup CMD` lines and the output under each, by the command's
/// first word (`pair`, `status`...).
fn readme_samples() -> BTreeMap<String, (String, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let mut samples = BTreeMap::new();
    let mut current: Option<(String, String, Vec<String>)> = None;
    let mut in_fence = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        let done = !in_fence || line.is_empty() || line.starts_with("$ ");
        if done {
            if let Some((name, cmd, lines)) = current.take() {
                samples.insert(name, (cmd, lines));
            }
        }
        if let Some(cmd) = line.strip_prefix("$ cambackup ").filter(|_| in_fence) {
            let name = cmd.split_whitespace().next().unwrap_or("").to_string();
            current = Some((name, cmd.to_string(), Vec::new()));
        } else if let Some((_, _, lines)) = current.as_mut() {
            lines.push(line.to_string());
        }
    }
    samples
}

/// A line with what depends on the run masked: each number (`35.0`, `10:01:28`, `0001`) is
/// `N`, each size unit `U`, each URL `URL`; runs of spaces (column widths) are one space.
fn mask(line: &str) -> String {
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| {
            if w.starts_with("http://") || w.starts_with("https://") {
                return "URL".into();
            }
            let mut out = String::new();
            let mut chars = w.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_digit() {
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    {
                        chars.next();
                    }
                    out.push('N');
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect();
    let mut out = words.join(" ");
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        out = out.replace(&format!("N {unit}"), "N U");
    }
    out
}

/// The text before a line's value: `queue:` of `queue:  0 pending`, `user_id` of a field line.
fn label(line: &str) -> String {
    match line.strip_prefix("  ") {
        Some(field) => field.split_whitespace().next().unwrap_or("").to_string(),
        None => line.split(':').next().unwrap_or("").to_string(),
    }
}

/// Runs `cambackup --socket S ARGS` (stdin: `input`); its stdout, which must be a success.
fn cli(rig: &Rig, args: &[&str], input: &str) -> String {
    let mut child = testkit::daemon::command(&bin())
        .arg("--socket")
        .arg(rig.daemon.socket())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("TZ", "UTC")
        .spawn()
        .expect("run cambackup");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "cambackup {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The README's lines for `cmd` equal the real ones, masked, in order.
fn same_lines(cmd: &str, readme: &[String], real: &str) {
    let want: Vec<String> = readme.iter().map(|l| mask(l)).collect();
    let got: Vec<String> = real.lines().map(mask).collect();
    assert_eq!(
        want, got,
        "README's `cambackup {cmd}` sample is stale; the CLI prints:\n{real}"
    );
}

// Multi-threaded: the CLI runs blocking on one worker while the receiver (on this runtime)
// answers the pairing's token check on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_sample_outputs_are_what_the_cli_prints() {
    let samples = readme_samples();
    let sample = |name: &str| -> &Vec<String> {
        &samples
            .get(name)
            .unwrap_or_else(|| panic!("README has no `$ cambackup {name}` sample"))
            .1
    };
    let cam = FakeCamera::new();
    // The README's device and files.
    cam.with("device", "type", "\"SJ10 Pro\"")
        .with("device", "serial", "\"SJ10P22910042\"");
    let files = [
        "IMG_0001.JPG",
        "IMG_0002.JPG",
        "IMG_0003.JPG",
        "VID_0004.MP4",
    ];
    let rels: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let rel = cam.photo(f, 1000 * (i as u64 + 1));
            cam.age_media(&rel, Duration::from_secs(600));
            rel
        })
        .collect();
    let rig = Rig::start(cam).await;

    let pair = cli(
        &rig,
        &["pair", "--user-id", "alice-123", "--token-file", "-"],
        TOKEN,
    );
    same_lines("pair", sample("pair"), &pair);
    eventually(T, "the four files queued", || async {
        rig.status().await["queue"]["pending"] == 4
    })
    .await;
    same_lines("queue", sample("queue"), &cli(&rig, &["queue"], ""));
    same_lines(
        "settings",
        sample("settings"),
        &cli(&rig, &["settings", "auto_upload", "true"], ""),
    );
    let rels: Vec<&str> = rels.iter().map(String::as_str).collect();
    rig.expect_uploaded(&rels, T).await;
    eventually(T, "the four files backed up", || async {
        rig.status().await["card"]["files_backed_up"] == 4
    })
    .await;

    // history: the same columns and rows (the order of equal times may differ).
    let history = cli(&rig, &["history"], "");
    let sorted = |lines: Vec<String>| {
        let mut v: Vec<String> = lines.iter().map(|l| mask(l)).collect();
        v[1..].sort();
        v
    };
    assert_eq!(
        sorted(sample("history").clone()),
        sorted(history.lines().map(String::from).collect()),
        "README's `cambackup history` sample is stale; the CLI prints:\n{history}"
    );

    // why: the same lines but the card's (the README's card has a serial, the test's none).
    let why = cli(&rig, &["why", "DCIM/100MEDIA/IMG_0001.JPG"], "");
    let but_card = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.starts_with("card:"))
            .map(|l| mask(l))
            .collect()
    };
    assert_eq!(
        but_card(sample("why").clone()),
        but_card(why.lines().map(String::from).collect()),
        "README's `cambackup why` sample is stale; the CLI prints:\n{why}"
    );
    assert!(why.contains("\ncard:       on the card"), "{why}");

    // privacy: the same lines and labels; every setting the daemon has, by name, in order.
    let privacy = cli(&rig, &["privacy"], "");
    let want: Vec<String> = sample("privacy").iter().map(|l| label(l)).collect();
    let got: Vec<String> = privacy.lines().map(label).collect();
    assert_eq!(
        want, got,
        "README's `cambackup privacy` lines; the CLI prints:\n{privacy}"
    );
    let keys = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .skip(2)
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .collect()
    };
    let settings_line = |lines: Vec<&str>| {
        lines
            .into_iter()
            .find(|l| l.starts_with("Your settings:"))
            .expect("a `Your settings:` line")
            .to_string()
    };
    assert_eq!(
        keys(&settings_line(
            sample("privacy").iter().map(String::as_str).collect()
        )),
        keys(&settings_line(privacy.lines().collect())),
        "README's `cambackup privacy` lists other settings than the CLI:\n{privacy}"
    );
    for (readme, real) in sample("privacy").iter().zip(privacy.lines()) {
        // Where it goes and how depend on the endpoint: the README's is an https server, the
        // test's a loopback one.
        if !["Sent to", "Transport", "Leaves"].contains(&label(real).as_str()) {
            assert_eq!(
                mask(readme),
                mask(real),
                "README's `cambackup privacy`:\n{privacy}"
            );
        }
    }

    // status: taken in another state (an upload in flight): the lines every status has are
    // there, and those that read the same in any state are the CLI's.
    let status = cli(&rig, &["status"], "");
    let real: BTreeMap<String, String> = status.lines().map(|l| (label(l), mask(l))).collect();
    let readme: BTreeMap<String, String> = sample("status")
        .iter()
        .map(|l| (label(l), mask(l)))
        .collect();
    for always in ["state", "queue", "card", "format", "device", "uplink"] {
        assert!(
            readme.contains_key(always),
            "README's `cambackup status` has no `{always}:` line; the CLI prints:\n{status}"
        );
    }
    // The lines whose words do not depend on the state (`uplink` does: an upload in flight
    // is bound to its interface).
    for label in ["queue", "card", "device"] {
        assert_eq!(
            readme.get(label),
            real.get(label),
            "README's `cambackup status` `{label}:` line; the CLI prints:\n{status}"
        );
    }
}

/// A config error names the kind of value in words, not serde's Rust type (`expected u64`).
#[test]
fn config_errors_say_a_whole_number_not_u64() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/cambackup.toml"
    ))
    .unwrap();
    let bad = example.replacen("settle_secs = 10", "settle_secs = \"ten\"", 1);
    assert_ne!(
        bad, example,
        "examples/cambackup.toml has no `settle_secs = 10`"
    );
    let file = dir.path().join("cambackup.toml");
    std::fs::write(&file, bad).unwrap();
    let out = testkit::daemon::command(&bin())
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`media.settle_secs`") && err.contains("expected a whole number"),
        "{err}"
    );
    assert!(!err.contains("u64"), "{err}");
}
