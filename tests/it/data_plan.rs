//! Issue 11, item 6: the data plan. Once `cellular_daily_mib` went over cellular today, uploads
//! over cellular wait (`data_budget_used`), the one in flight stops at the budget, the count
//! survives a restart, and the next local day (the test's clock) resumes.

use std::time::Duration;

use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::tus::Receiver;

use crate::common::{eventually, Rig, TestClock, BIG, TOKEN};

/// 2027-03-01 00:00:00 UTC (the daemon runs with TZ=UTC).
const DAY0: i64 = 1_803_859_200;
const HOUR: i64 = 3600;
const MIB: u64 = 1 << 20;
/// What may go past the budget between two readings of the count (a piece or two).
const SLACK: u64 = 128 * 1024;

/// The bytes the server has received in PATCH bodies so far.
fn received(rx: &Receiver) -> u64 {
    rx.requests_with_method("PATCH")
        .iter()
        .map(|r| r.body_len)
        .sum()
}

#[tokio::test]
async fn the_budget_stops_the_upload_survives_a_restart_and_the_next_day_resumes() {
    let cam = FakeCamera::new();
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let video = cam.photo("VID_0100.MP4", BIG);
    cam.age_media(&video, Duration::from_secs(600));
    let clock = TestClock::new(cam.root());
    clock.set_to(DAY0 + 10 * HOUR);
    let rx = Receiver::builder().token(TOKEN).start().await;
    let mut rig = Rig::start_with_clock(cam, rx, &clock).await;
    rig.pair().await;
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(
                json!({"network": "any", "cellular_daily_mib": 3, "max_rate_kib_per_sec": 1024,
                        "auto_upload": true}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{body}");

    eventually(Duration::from_secs(30), "the budget used", || async {
        rig.status().await["blocked_by"] == json!(["data_budget_used"])
    })
    .await;
    eventually(Duration::from_secs(2), "the upload stopped", || async {
        rig.status().await["current"].is_null()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_day = received(&rig.rx);
    assert!(
        (3 * MIB - SLACK..=3 * MIB + SLACK).contains(&first_day),
        "{first_day} bytes over cellular under a budget of 3 MiB"
    );
    let s = rig.status().await;
    let counted = s["cellular_bytes_today"].as_u64().unwrap();
    assert!((3 * MIB..=3 * MIB + SLACK).contains(&counted), "{s}");
    assert_eq!(s["manual_blocked_by"], json!(["data_budget_used"]), "{s}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&rig.rx), first_day, "bytes after the budget");

    // A restart remembers today's use.
    rig.daemon.restart().await;
    eventually(
        Duration::from_secs(10),
        "still used up after a restart",
        || async {
            let s = rig.status().await;
            s["blocked_by"] == json!(["data_budget_used"])
                && s["cellular_bytes_today"].as_u64() == Some(counted)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received(&rig.rx), first_day, "bytes after a restart");

    // The next day: a fresh budget, and the upload carries on (and stops at 3 MiB again).
    clock.set_to(DAY0 + 34 * HOUR);
    eventually(Duration::from_secs(10), "uploading again", || async {
        received(&rig.rx) > first_day
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the new day's budget used",
        || async { rig.status().await["blocked_by"] == json!(["data_budget_used"]) },
    )
    .await;
    let s = rig.status().await;
    let today = s["cellular_bytes_today"].as_u64().unwrap();
    assert!((3 * MIB..=3 * MIB + SLACK).contains(&today), "{s}");
    let total = received(&rig.rx);
    assert!(total >= 6 * MIB - 2 * SLACK, "{total}");
}

/// Sets the budget to 1 MiB over cellular at 1 MiB/s, with consent, and waits until it is used.
/// Returns the bytes the server received and the count the status shows.
async fn use_up_one_mib(rig: &Rig) -> (u64, u64) {
    let (code, body) = rig
        .daemon
        .api(
            "PATCH",
            "/v1/settings",
            Some(
                json!({"network": "any", "cellular_daily_mib": 1, "max_rate_kib_per_sec": 1024,
                        "auto_upload": true}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(30), "the budget used", || async {
        rig.status().await["blocked_by"] == json!(["data_budget_used"])
    })
    .await;
    eventually(Duration::from_secs(2), "the upload stopped", || async {
        rig.status().await["current"].is_null()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = received(&rig.rx);
    assert!(
        (MIB - SLACK..=MIB + SLACK).contains(&sent),
        "{sent} bytes over cellular under a budget of 1 MiB"
    );
    let counted = rig.status().await["cellular_bytes_today"].as_u64().unwrap();
    assert!((MIB..=MIB + SLACK).contains(&counted), "{counted}");
    (sent, counted)
}

/// Nothing more goes out for a while, and the status still says the day's budget is used,
/// with the bytes already sent as today's count.
async fn still_used_up(rig: &Rig, sent: u64, counted: u64, when: &str) {
    eventually(Duration::from_secs(10), when, || async {
        let s = rig.status().await;
        s["blocked_by"] == json!(["data_budget_used"])
            && s["cellular_bytes_today"].as_u64() == Some(counted)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(received(&rig.rx), sent, "bytes over cellular {when}");
    assert_eq!(
        rig.status().await["blocked_by"],
        json!(["data_budget_used"]),
        "{when}"
    );
}

fn cellular_rig_camera() -> FakeCamera {
    let cam = FakeCamera::new();
    cam.set_interface("wwan0", true, false);
    cam.set_default_route("wwan0");
    let video = cam.photo("VID_0100.MP4", BIG);
    cam.age_media(&video, Duration::from_secs(600));
    cam
}

/// Issue 22, item 3: a time-zone change west moves the local date back to yesterday, and the
/// change back returns to today. Neither gives today's bytes a fresh budget (before, each
/// change of day number zeroed the count: 3 MiB went out under a budget of 1 MiB).
#[tokio::test]
async fn a_time_zone_change_west_and_back_does_not_renew_the_budget() {
    let cam = cellular_rig_camera();
    let clock = TestClock::new(cam.root());
    // 02:00 UTC: 21:00 of the day before five hours west.
    clock.set_to(DAY0 + 2 * HOUR);
    let rx = Receiver::builder().token(TOKEN).start().await;
    let mut rig = Rig::start_with_clock(cam, rx, &clock).await;
    rig.pair().await;
    let (sent, counted) = use_up_one_mib(&rig).await;

    // POSIX `UTC+5` is five hours west of UTC.
    rig.daemon.set_env("TZ", "UTC+5");
    rig.daemon.restart().await;
    still_used_up(&rig, sent, counted, "after a time-zone change west").await;

    rig.daemon.set_env("TZ", "UTC");
    rig.daemon.restart().await;
    still_used_up(&rig, sent, counted, "after the time-zone change back").await;
}

/// Issue 22, item 3: a clock stepped back across midnight (NTP correcting it, the user
/// setting it) does not forget the bytes already sent; the next day still renews the budget.
#[tokio::test]
async fn a_clock_stepped_back_does_not_renew_the_budget() {
    let cam = cellular_rig_camera();
    let clock = TestClock::new(cam.root());
    clock.set_to(DAY0 + HOUR);
    let rx = Receiver::builder().token(TOKEN).start().await;
    let rig = Rig::start_with_clock(cam, rx, &clock).await;
    rig.pair().await;
    let (sent, counted) = use_up_one_mib(&rig).await;

    clock.set_to(DAY0 - 2 * HOUR);
    still_used_up(&rig, sent, counted, "after the clock stepped back a day").await;

    // The next day (after the real one): a fresh budget.
    clock.set_to(DAY0 + 25 * HOUR);
    eventually(
        Duration::from_secs(30),
        "the next day's budget used",
        || async {
            received(&rig.rx) > sent
                && rig.status().await["blocked_by"] == json!(["data_budget_used"])
        },
    )
    .await;
    let today = rig.status().await["cellular_bytes_today"].as_u64().unwrap();
    assert!((MIB..=MIB + SLACK).contains(&today), "{today}");
}

/// A camera without an RTC battery restarts at 1970 and NTP sets its clock later. The day of
/// 1970 names no day of the user's plan: the count waits for the clock, and today's bytes
/// still count once it is set (counted at 1970, they were moved there and today was fresh).
#[tokio::test]
async fn a_restart_at_1970_does_not_renew_the_budget() {
    let cam = cellular_rig_camera();
    let clock = TestClock::new(cam.root());
    clock.set_to(DAY0 + HOUR);
    let rx = Receiver::builder().token(TOKEN).start().await;
    let mut rig = Rig::start_with_clock(cam, rx, &clock).await;
    rig.pair().await;
    let (sent, counted) = use_up_one_mib(&rig).await;

    rig.daemon.stop().await;
    clock.set_to(HOUR);
    rig.daemon.restart().await;
    eventually(Duration::from_secs(10), "clock_not_set", || async {
        rig.status().await["attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["code"] == "clock_not_set")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    clock.set_to(DAY0 + 2 * HOUR);
    still_used_up(&rig, sent, counted, "after a restart at 1970 and NTP").await;
}
