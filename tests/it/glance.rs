//! Issue 11, item 1: status at a glance. What an app shows without piecing calls together: how
//! much of the card is backed up, when the last upload finished, when a retry is due.

use std::time::Duration;

use testkit::camera::FakeCamera;
use testkit::tus::Fault;

use crate::common::{eventually, Rig};

const T: Duration = Duration::from_secs(20);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn status_says_how_much_of_the_card_is_backed_up_when_and_when_the_next_retry_is() {
    let cam = FakeCamera::new();
    let a = cam.photo("A.JPG", 1000);
    let b = cam.photo("B.JPG", 2500);
    for rel in [&a, &b] {
        cam.age_media(rel, Duration::from_secs(600));
    }
    let rig = Rig::start(cam).await;
    eventually(T, "both files counted on the card", || async {
        rig.status().await["card"]["files_total"] == 2
    })
    .await;
    let s = rig.status().await;
    assert_eq!(s["card"]["files_backed_up"], 0, "{s}");
    assert_eq!(s["card"]["bytes_total"], 3500, "{s}");
    assert!(s["last_success_at"].is_null(), "{s}");
    assert!(s["next_attempt_at"].is_null(), "{s}");

    let before = now();
    rig.go().await;
    rig.expect_uploaded(&[&a, &b], T).await;
    eventually(T, "both files backed up", || async {
        rig.status().await["card"]["files_backed_up"] == 2
    })
    .await;
    let s = rig.status().await;
    assert_eq!(s["card"]["bytes_backed_up"], 3500, "{s}");
    let last = s["last_success_at"].as_i64().expect("last_success_at set");
    assert!(before <= last && last <= now(), "{s}");

    // The server asks for 30 s of quiet: the app can say when the next try is.
    rig.rx.inject(Fault::retry_after(503, 30).on("POST"));
    let c = rig.cam.photo("C.JPG", 700);
    rig.cam.age_media(&c, Duration::from_secs(600));
    eventually(T, "a retry is scheduled", || async {
        !rig.status().await["next_attempt_at"].is_null()
    })
    .await;
    let s = rig.status().await;
    let next = s["next_attempt_at"].as_i64().unwrap();
    // Retry-After 30 plus the daemon's jitter of up to twice it (src/upload/retry.rs).
    assert!(next >= now() + 20 && next <= now() + 92, "{s}");
    assert_eq!(s["card"]["files_total"], 3, "{s}");
    assert_eq!(s["card"]["files_backed_up"], 2, "{s}");
    assert_eq!(s["card"]["bytes_total"], 4200, "{s}");
}
