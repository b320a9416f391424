//! Issue 11, item 5: the user's hours. Outside the schedule's windows automatic uploads wait
//! (`outside_schedule`); an upload in flight at a window's end stops within 2 s and resumes in
//! the next window; a manual upload ignores the schedule. The daemon's clock is the test's.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::camera::FakeCamera;

use crate::common::{
    assert_resumes, assert_stops_within_2s, eventually, server_offset, slow_receiver, Rig,
    TestClock, BIG,
};

/// 2027-03-01 00:00:00 UTC (the daemon runs with TZ=UTC).
const DAY0: i64 = 1_803_859_200;
const HOUR: i64 = 3600;

#[tokio::test]
async fn an_upload_stops_at_the_windows_end_resumes_in_the_next_and_manual_ignores_it() {
    let cam = FakeCamera::new();
    let video = cam.photo("VID_0100.MP4", BIG);
    cam.age_media(&video, Duration::from_secs(600));
    let clock = TestClock::new(cam.root());
    clock.set_to(DAY0 + 6 * HOUR); // 06:00, inside 01:00-07:00
    let rig = Rig::start_with_clock(cam, slow_receiver().await, &clock).await;
    rig.pair().await;
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"schedule": ["01:00-07:00"], "auto_upload": true})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["schedule"], json!(["01:00-07:00"]));
    eventually(Duration::from_secs(30), "2 MiB on the server", || async {
        server_offset(&rig.rx) >= 2 << 20
    })
    .await;

    // 07:00: the window ends.
    clock.set_to(DAY0 + 7 * HOUR);
    let stopped = assert_stops_within_2s(&rig, Instant::now()).await;
    let s = rig.status().await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["blocked_by"], json!(["outside_schedule"]), "{s}");
    assert_eq!(s["manual_blocked_by"], json!([]), "{s}");

    // 01:00 the next day: it resumes where the server stopped.
    clock.set_to(DAY0 + 25 * HOUR);
    assert_resumes(&rig, &video, &stopped).await;

    // 08:00: a new photo waits, unless the user asks for it.
    clock.set_to(DAY0 + 32 * HOUR);
    eventually(
        Duration::from_secs(10),
        "outside the window again",
        || async { rig.status().await["blocked_by"] == json!(["outside_schedule"]) },
    )
    .await;
    let photo = rig.cam.photo("IMG_0200.JPG", 3000);
    rig.cam.age_media(&photo, Duration::from_secs(600));
    eventually(Duration::from_secs(10), "the photo queued", || async {
        rig.status().await["queue"]["pending"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        rig.rx.completed(&photo).is_none(),
        "uploaded outside the window"
    );
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({"paths": [photo]})))
        .await;
    assert_eq!(code, 202, "{body}");
    rig.expect_uploaded(&[&video, &photo], Duration::from_secs(20))
        .await;
}

#[tokio::test]
async fn a_bad_window_is_refused_naming_the_field_and_nothing_changes() {
    let cam = FakeCamera::new();
    let rig = Rig::start(cam).await;
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"max_rate_kib_per_sec": 100, "schedule": ["01:00-07:00", "7pm-9pm"]})),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("schedule"), "{body}");
    assert!(message.contains("7pm-9pm"), "{body}");
    let (_, settings) = rig.daemon.api("GET", "/v1/settings", None).await;
    assert_eq!(settings["schedule"], json!([]), "{settings}");
    assert_eq!(settings["max_rate_kib_per_sec"], 0, "{settings}");
}
