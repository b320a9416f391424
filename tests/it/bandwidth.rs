//! Issue 11, item 4: the user's cap on the upload rate, measured at the server, and a change
//! that applies to the upload in flight within a second without restarting it.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::tus::Receiver;

use crate::common::{eventually, Rig, TOKEN};

/// The bytes the server has received in PATCH bodies so far.
fn received(rx: &Receiver) -> u64 {
    rx.requests_with_method("PATCH")
        .iter()
        .map(|r| r.body_len)
        .sum()
}

/// The server's receive rate over `secs`, in KiB/s.
async fn rate_over(rx: &Receiver, secs: u64) -> f64 {
    let (b0, t0) = (received(rx), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (b1, t1) = (received(rx), Instant::now());
    (b1 - b0) as f64 / 1024.0 / (t1 - t0).as_secs_f64()
}

async fn set_rate(rig: &Rig, kib: u64) {
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"max_rate_kib_per_sec": kib})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["max_rate_kib_per_sec"], kib);
}

#[tokio::test]
async fn the_rate_at_the_server_keeps_to_the_cap_and_a_change_applies_within_a_second() {
    let cam = FakeCamera::new();
    // One PATCH for the whole test: a change must apply to it, not to the next one.
    cam.with("cloud", "chunk_sizing", "\"fixed\"");
    cam.with("cloud", "chunk_size_mib", "64");
    let video = "DCIM/100MEDIA/BIG.MP4";
    cam.write_sample(video, 32 * 1024 * 1024);
    cam.age_media(video, Duration::from_secs(600));
    let rx = Receiver::builder().token(TOKEN).start().await;
    let rig = Rig::start_with(cam, rx).await;
    rig.pair().await;
    set_rate(&rig, 256).await;
    rig.consent(true).await;
    eventually(Duration::from_secs(20), "the upload under way", || async {
        received(&rig.rx) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let slow = rate_over(&rig.rx, 5).await;
    eprintln!("measured at the server under a cap of 256 KiB/s: {slow:.1} KiB/s");
    assert!(
        (slow - 256.0).abs() <= 25.6,
        "{slow:.1} KiB/s at the server under a cap of 256"
    );

    set_rate(&rig, 768).await;
    // Within a second the new rate holds: measured from one second after the change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fast = rate_over(&rig.rx, 4).await;
    eprintln!("measured at the server from 1 s after the change to 768 KiB/s: {fast:.1} KiB/s");
    assert!(
        (fast - 768.0).abs() <= 76.8,
        "{fast:.1} KiB/s at the server under a cap of 768"
    );
    // The same upload and the same request carried on: nothing was restarted.
    assert_eq!(rig.rx.creations(), 1, "{}", rig.rx.request_summary());
    assert_eq!(
        rig.rx.requests_with_method("PATCH").len(),
        1,
        "{}",
        rig.rx.request_summary()
    );

    // No limit: the rest goes at the link's speed.
    set_rate(&rig, 0).await;
    rig.expect_uploaded(&[video], Duration::from_secs(30)).await;
}
