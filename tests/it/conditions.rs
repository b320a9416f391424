//! Issue 4: the device's conditions, read from the fake sysfs/procfs. What a user would check:
//! while something holds uploads back, `GET /v1/status` names it and nothing reaches the
//! server; once it clears, the waiting files go up; a condition lost mid-upload stops the
//! upload within 2 s and it later resumes where the server left off.
//!
//! The helpers for a long, interruptible upload are `pub(crate)`: `consent.rs` uses them too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::camera::FakeCamera;

use crate::common::{
    assert_resumes, assert_stops_within_2s, eventually, uploading_a_big_video, Rig,
};

const T: Duration = Duration::from_secs(30);

/// Longer than the daemon needs to start an upload once allowed (settle 1 s, hold-down 1 s,
/// conditions poll 1 s): silence this long means "held back", not "not yet".
const HELD: Duration = Duration::from_secs(3);

/// Starts the daemon on `cam` with one photo on the card and pairs (no consent yet).
async fn paired_with_a_photo(cam: FakeCamera) -> (Rig, String) {
    let rel = cam.photo("IMG_0001.JPG", 200_000);
    let rig = Rig::start(cam).await;
    rig.pair().await;
    (rig, rel)
}

/// The status names exactly `block` as what holds automatic uploads back, the photo waits,
/// and for [`HELD`] nothing reaches the server.
async fn assert_held_back_by(rig: &Rig, block: &str) {
    eventually(T, &format!("blocked_by == [{block}]"), || async {
        let s = rig.status().await;
        s["blocked_by"] == json!([block]) && s["queue"]["pending"] == 1
    })
    .await;
    tokio::time::sleep(HELD).await;
    let s = rig.status().await;
    assert_eq!(s["blocked_by"], json!([block]), "{s:#}");
    assert_eq!(s["state"], "waiting", "{s:#}");
    assert!(
        rig.rx.requests().is_empty(),
        "the server was contacted while {block}:{}",
        rig.rx.request_summary()
    );
}

/// Once released, the photo goes up, once.
async fn assert_released(rig: &Rig, rel: &str) {
    rig.expect_uploaded(&[rel], T).await;
    assert_eq!(rig.rx.creations(), 1);
    eventually(T, "blocked_by empty", || async {
        rig.status().await["blocked_by"] == json!([])
    })
    .await;
}

#[tokio::test]
async fn not_charging_holds_uploads_until_the_charger_is_plugged_in() {
    let cam = FakeCamera::new();
    cam.set_charging(false);
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "not_charging").await;
    assert_eq!(rig.status().await["conditions"]["charging"], false);
    rig.cam.set_charging(true);
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn cellular_is_not_used_on_a_wifi_preference_but_is_with_any() {
    let cam = FakeCamera::new();
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "network_not_allowed").await;
    let s = rig.status().await;
    assert_eq!(s["conditions"]["network"], "cellular", "{s:#}");
    assert_eq!(s["conditions"]["interface"], "wwan0", "{s:#}");

    let (code, body) = rig
        .daemon
        .api("PATCH", "/v1/settings", Some(json!({"network": "any"})))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn a_wifi_interface_that_is_down_behind_a_stale_route_is_offline() {
    let cam = FakeCamera::new();
    cam.set_interface("wlan0", false, true); // the default route still names it
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "offline").await;
    rig.cam.set_interface("wlan0", true, true);
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn the_recording_flag_holds_uploads_until_it_goes() {
    let cam = FakeCamera::new();
    cam.set_recording(true);
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "recording").await;
    rig.cam.set_recording(false);
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn the_firmwares_recording_signal_holds_uploads_until_it_ends() {
    let (rig, rel) = paired_with_a_photo(FakeCamera::new()).await;
    let recording = |active: bool| {
        let rig = &rig;
        async move {
            let (code, body) = rig
                .daemon
                .api("PUT", "/v1/recording", Some(json!({"active": active})))
                .await;
            assert_eq!(code, 200, "{body}");
        }
    };
    recording(true).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "recording").await;
    recording(false).await;
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn a_hot_camera_holds_automatic_and_manual_uploads() {
    let cam = FakeCamera::new();
    cam.set_zone_temp_c(3, 75.0); // the hottest zone counts, whichever it is
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "too_hot").await;
    assert_eq!(rig.status().await["manual_blocked_by"], json!(["too_hot"]));
    rig.cam.set_zone_temp_c(3, 40.0);
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn a_low_battery_holds_uploads_even_on_the_charger() {
    let cam = FakeCamera::new();
    cam.set_battery(Some(("Charging", 10)));
    let (rig, rel) = paired_with_a_photo(cam).await;
    rig.consent(true).await;
    assert_held_back_by(&rig, "battery_low").await;
    rig.cam.set_battery(Some(("Charging", 50)));
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn nothing_goes_up_without_consent() {
    let (rig, rel) = paired_with_a_photo(FakeCamera::new()).await;
    assert_held_back_by(&rig, "auto_upload_off").await;
    rig.consent(true).await;
    assert_released(&rig, &rel).await;
}

#[tokio::test]
async fn only_the_data_types_the_user_chose_go_up_automatically() {
    let cam = FakeCamera::new();
    let photo = cam.photo("IMG_0001.JPG", 40_000);
    let video = "DCIM/100MEDIA/VID_0002.MP4";
    cam.write_sample(video, 60_000);
    let rig = Rig::start(cam).await;
    rig.pair().await;
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"data_types": ["photo"], "auto_upload": true})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    rig.expect_uploaded(&[photo.as_str()], T).await;
    tokio::time::sleep(HELD).await;
    assert_eq!(
        rig.rx.creations(),
        1,
        "the video stayed home: {}",
        rig.rx.request_summary()
    );
    assert_eq!(rig.paths("pending").await, [video]);
    rig.daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(json!({"data_types": ["photo", "video"]})),
        )
        .await;
    rig.expect_uploaded(&[photo.as_str(), video], T).await;
}

#[tokio::test]
async fn a_manual_upload_needs_neither_charger_nor_consent_and_sends_only_what_was_asked() {
    let cam = FakeCamera::new();
    cam.set_charging(false);
    let asked = cam.photo("IMG_0001.JPG", 50_000);
    let other = cam.photo("IMG_0002.JPG", 50_000);
    let rig = Rig::start(cam).await;
    rig.pair().await;
    eventually(T, "both queued", || async {
        rig.items(Some("pending")).await.len() == 2
    })
    .await;
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({"paths": [asked]})))
        .await;
    assert_eq!(code, 202, "{body}");
    rig.expect_uploaded(&[asked.as_str()], T).await;
    tokio::time::sleep(HELD).await;
    assert_eq!(rig.rx.creations(), 1, "{}", rig.rx.request_summary());
    assert_eq!(rig.paths("pending").await, [other]);
}

#[tokio::test]
async fn a_manual_upload_still_obeys_the_network_preference() {
    let cam = FakeCamera::new();
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let (rig, rel) = paired_with_a_photo(cam).await;
    eventually(T, "queued", || async {
        rig.items(Some("pending")).await.len() == 1
    })
    .await;
    let (code, body) = rig
        .daemon
        .api("POST", "/v1/uploads", Some(json!({"paths": [rel]})))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        rig.status().await["manual_blocked_by"],
        json!(["network_not_allowed"])
    );
    tokio::time::sleep(HELD).await;
    assert!(
        rig.rx.requests().is_empty(),
        "a manual upload went over cellular:{}",
        rig.rx.request_summary()
    );
    // Back on Wi-Fi, it goes (consent is still off: it is the manual request that runs).
    rig.cam.set_default_route("wlan0");
    rig.expect_uploaded(&[rel.as_str()], T).await;
    assert_eq!(rig.rx.creations(), 1);
}

// ----- a long upload, interrupted -----

#[tokio::test]
async fn pulling_the_charger_stops_an_upload_within_2s_and_it_resumes_later() {
    let (rig, rel) = uploading_a_big_video(FakeCamera::new()).await;
    rig.cam.set_charging(false);
    let stopped = assert_stops_within_2s(&rig, Instant::now()).await;
    let s: Value = rig.status().await;
    assert_eq!(s["blocked_by"], json!(["not_charging"]), "{s:#}");
    rig.cam.set_charging(true);
    assert_resumes(&rig, &rel, &stopped).await;
}
