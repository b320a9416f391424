//! A proxy before the tus server that limits request bodies (nginx's `client_max_body_size`,
//! a CDN's request limit, a balancer's rule), here a real haproxy. One that answers 413 as
//! soon as it reads `Content-Length` and closes is mostly seen by the daemon, still writing
//! the body, as a broken pipe; one that closes without a word always is. Before, the daemon
//! sent the same body again forever and the file never arrived. Now it learns the limit
//! (`upload::chunk::BodyLimit`), says so, and every file arrives once.

use std::time::Duration;

use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::haproxy::Haproxy;
use testkit::tus::Receiver;

use crate::common::{bin, eventually, Rig, TOKEN};

const MIB: u64 = 1 << 20;

const T: Duration = Duration::from_secs(120);

/// How the proxy refuses a body over its limit.
#[derive(Debug, Clone, Copy)]
enum Refuses {
    /// `http-request deny deny_status 413`: answers 413 and closes.
    With413,
    /// `http-request reject`: closes the connection without an answer.
    Silently,
}

/// haproxy refusing bodies over `limit` bytes, before a receiver; the daemon's endpoint is
/// the proxy.
async fn behind_a_limit(cam: FakeCamera, limit: u64, how: Refuses) -> (Rig, Haproxy) {
    let rx = Receiver::builder()
        .token(TOKEN)
        .relative_location()
        .start()
        .await;
    let action = match how {
        Refuses::With413 => "deny deny_status 413",
        Refuses::Silently => "reject",
    };
    let rule = format!("http-request {action} if {{ req.hdr_val(content-length) gt {limit} }}");
    let proxy = Haproxy::start(rx.addr(), &[&rule]);
    let config = cam.write_config(&format!("{}/files/", proxy.url()));
    let daemon = Daemon::start(&bin(), &config).await;
    (Rig { cam, rx, daemon }, proxy)
}

async fn the_limit_is_learnt_once_and_every_file_arrives_once(how: Refuses) {
    let cam = FakeCamera::new();
    // The maker's bound well over the proxy's limit of 8 MiB, as a maker who did not know it.
    cam.with("cloud", "chunk_size_mib", "64");
    let first = cam.photo("VID_0001.MP4", 40 * MIB + 123);
    cam.age_media(&first, Duration::from_secs(600));
    let (rig, proxy) = behind_a_limit(cam, 8 * MIB, how).await;
    rig.go().await;
    rig.expect_uploaded(&[&first], T).await;
    let refused = proxy.refused();
    eprintln!("{how:?}: bodies refused while the limit was learnt: {refused}");
    assert!(
        refused >= 1,
        "the proxy refused nothing: the test did not test\n{}",
        proxy.log()
    );
    // A halving takes one 413 seen, or two bodies cut at one offset: 36 MiB (the file's rest
    // after the first 4 MiB) -> 18 -> 9 -> 4 is at most six cuts, and one more for each
    // attempt that ends between the two cuts of a pair (its prompt tries or their 10 s used
    // up: the next attempt's first chunk, 4 MiB, goes through and ends the run of cuts; on a
    // loaded machine at most three attempts). Without the limit learnt: one every few seconds
    // until the timeout.
    assert!(refused <= 9, "{refused} bodies refused\n{}", proxy.log());
    let log = rig.daemon.log();
    assert!(
        log.contains("limits request bodies") && log.contains("cloud.chunk_size_mib"),
        "the daemon did not say why: {log}"
    );

    // A second file: the limit is known, no body is refused again.
    let second = rig.cam.photo("VID_0002.MP4", 30 * MIB + 7);
    rig.cam.age_media(&second, Duration::from_secs(600));
    rig.expect_uploaded(&[&first, &second], T).await;
    assert_eq!(
        proxy.refused(),
        refused,
        "refused again after the limit was learnt\n{}",
        proxy.log()
    );
    assert_eq!(rig.rx.creations(), 2, "{}", rig.rx.request_summary());
    assert_eq!(rig.items(Some("done")).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_413_over_its_limit_is_learnt_and_every_file_arrives_once() {
    the_limit_is_learnt_once_and_every_file_arrives_once(Refuses::With413).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_closing_without_a_word_over_its_limit_is_learnt_and_every_file_arrives_once() {
    the_limit_is_learnt_once_and_every_file_arrives_once(Refuses::Silently).await;
}

/// Under 1 MiB, the least the daemon sends a PATCH: the file cannot go, and its error says
/// which limit to raise (a 413 seen fails it; cuts leave it retrying under the back-off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_limit_under_one_mib_holds_the_file_and_says_what_to_raise() {
    for how in [Refuses::With413, Refuses::Silently] {
        let cam = FakeCamera::new();
        let photo = cam.photo("IMG_0001.JPG", 3 * MIB);
        cam.age_media(&photo, Duration::from_secs(600));
        let (rig, proxy) = behind_a_limit(cam, 512 * 1024, how).await;
        rig.go().await;
        let error = || async {
            let items = rig.items(None).await;
            let first = items.first().and_then(|i| i["last_error"].as_str());
            first.unwrap_or_default().to_string()
        };
        eventually(T, "the file's error names the limit", || async {
            error().await.contains("limit on request bodies")
        })
        .await;
        eprintln!("{how:?}: {}", error().await);
        assert_eq!(rig.rx.completed_uploads().len(), 0);
        assert!(proxy.refused() >= 1, "{}", proxy.log());
    }
}
