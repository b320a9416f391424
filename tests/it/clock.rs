//! Issue 11, item 3: a camera without an RTC battery boots at 1970. Uploads wait for the clock
//! (no certificate could be verified), the status says so, and they start once it is set.

use std::time::{Duration, Instant};

use testkit::camera::FakeCamera;

use testkit::tus::Receiver;

use crate::common::{eventually, Rig, TestClock, TOKEN};

#[tokio::test]
async fn a_clock_at_1970_holds_uploads_and_says_clock_not_set_until_it_is_set() {
    let cam = FakeCamera::new();
    let photo = cam.photo("A.JPG", 4000);
    cam.age_media(&photo, Duration::from_secs(600));
    let clock = TestClock::new(cam.root());
    clock.set_to(3600); // 01:00 on 1 January 1970
    let rx = Receiver::builder().token(TOKEN).start().await;
    let rig = Rig::start_with_clock(cam, rx, &clock).await;
    rig.go().await;
    let codes = |s: &serde_json::Value| -> Vec<String> {
        s["attention"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["code"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(Duration::from_secs(20), "the photo queued", || async {
        rig.status().await["queue"]["pending"] == 1
    })
    .await;
    let s = rig.status().await;
    assert!(codes(&s).contains(&"clock_not_set".to_string()), "{s}");
    // Consent, pairing, conditions: everything holds but the clock. Nothing goes out.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rig.rx.requests().len(), 0, "{}", rig.rx.request_summary());
    assert_eq!(rig.status().await["state"], "waiting");

    // NTP sets the clock: the upload starts within seconds, and the attention goes away.
    clock.set_offset(0);
    let set = Instant::now();
    rig.expect_uploaded(&[&photo], Duration::from_secs(20))
        .await;
    assert!(
        set.elapsed() < Duration::from_secs(15),
        "{:?}",
        set.elapsed()
    );
    let s = rig.status().await;
    assert!(!codes(&s).contains(&"clock_not_set".to_string()), "{s}");
}
