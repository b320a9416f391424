//! A proxy before the tus server that limits request bodies (nginx's `client_max_body_size`,
//! a CDN's request limit, a balancer's rule), here a real haproxy. It answers 413 as soon as it
//! reads `Content-Length` and closes; the daemon, still writing the body, mostly sees a broken
//! pipe. Before, it sent the same body again forever and the file never arrived. Now it learns
//! the limit (`upload::chunk::BodyLimit`), says so, and every file arrives once.

use std::time::Duration;

use serde_json::Value;
use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::haproxy::Haproxy;
use testkit::tus::Receiver;

use crate::common::{bin, eventually, Rig, TOKEN};

const MIB: u64 = 1 << 20;

/// The proxy's limit: bodies over this are refused.
const LIMIT: u64 = 8 * MIB;

const T: Duration = Duration::from_secs(120);

/// haproxy refusing bodies over `limit` with 413, before a receiver; the daemon's endpoint
/// is the proxy.
async fn behind_a_limit(cam: FakeCamera, limit: u64) -> (Rig, Haproxy) {
    let rx = Receiver::builder()
        .token(TOKEN)
        .relative_location()
        .start()
        .await;
    let rule = format!(
        "http-request deny deny_status 413 if {{ req.hdr_val(content-length) gt {limit} }}"
    );
    let proxy = Haproxy::start(rx.addr(), &[&rule]);
    let config = cam.write_config(&format!("{}/files/", proxy.url()));
    let daemon = Daemon::start(&bin(), &config).await;
    (Rig { cam, rx, daemon }, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_limit_on_bodies_is_learnt_once_and_every_file_arrives_once() {
    let cam = FakeCamera::new();
    // The maker's bound well over the proxy's limit, as a maker who did not know it.
    cam.with("cloud", "chunk_size_mib", "64");
    let first = cam.photo("VID_0001.MP4", 40 * MIB + 123);
    cam.age_media(&first, Duration::from_secs(600));
    let (rig, proxy) = behind_a_limit(cam, LIMIT).await;
    rig.go().await;
    rig.expect_uploaded(&[&first], T).await;
    let refused = proxy.answered(413);
    eprintln!("bodies refused while the limit was learnt: {refused}");
    assert!(
        refused >= 1,
        "the proxy refused nothing: the test did not test\n{}",
        proxy.log()
    );
    // Each halving takes one 413 seen, or two bodies cut with nothing kept: 64 -> 8 MiB is at
    // most three halvings.
    assert!(refused <= 6, "{refused} bodies refused\n{}", proxy.log());
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
        proxy.answered(413),
        refused,
        "refused again after the limit was learnt"
    );
    assert_eq!(rig.rx.creations(), 2, "{}", rig.rx.request_summary());
    let patches = rig.rx.requests_with_method("PATCH");
    assert!(patches.iter().all(|r| r.body_len <= LIMIT));
    let done: Vec<Value> = rig.items(Some("done")).await;
    assert_eq!(done.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_one_mib_fails_the_file_and_says_what_to_raise() {
    let cam = FakeCamera::new();
    let photo = cam.photo("IMG_0001.JPG", 3 * MIB);
    cam.age_media(&photo, Duration::from_secs(600));
    let (rig, proxy) = behind_a_limit(cam, 512 * 1024).await;
    rig.go().await;
    eventually(T, "the file failed", || async {
        !rig.items(Some("failed")).await.is_empty()
    })
    .await;
    let item = &rig.items(Some("failed")).await[0];
    let error = item["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("413") && error.contains("limit on request bodies"),
        "{item}"
    );
    assert_eq!(rig.rx.completed_uploads().len(), 0);
    // Refused bodies are bounded: 4 MiB (the first chunk) down to 1 MiB, then the end.
    assert!(proxy.answered(413) <= 6, "{}", proxy.log());
}
