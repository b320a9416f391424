//! Issue 25: Wi-Fi without internet and captive portals. A request that finds something other
//! than the tus server answering (here a portal redirecting every request to its login page)
//! shows `captive_portal` in `blocked_by` and `status.unreachable` naming the link, sends
//! nothing more through that link (no back-off hammering), and tries again when the network
//! changes: then the real server is there and the file goes up. The DNS case runs in a network
//! namespace (tests/it/uplink.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use testkit::camera::FakeCamera;
use testkit::daemon::Daemon;
use testkit::tus::Receiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{bin, eventually, pair_and_consent, TOKEN};

const T: Duration = Duration::from_secs(30);

/// A captive portal on loopback: every request is answered 302 to its login page.
struct Portal {
    port: u16,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Portal {
    async fn start() -> Portal {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 302 Found\r\nLocation: http://portal.example/login\r\n\
                              Content-Type: text/html\r\nContent-Length: 0\r\n\
                              Connection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Portal {
            port,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captive_portal_holds_uploads_on_that_network_until_it_changes() {
    let portal = Portal::start().await;
    let cam = FakeCamera::new();
    let rel = cam.photo("IMG_0001.JPG", 150_000);
    cam.with("cloud", "retry_max_secs", "2");
    let config = cam.write_config(&format!("http://127.0.0.1:{}/files/", portal.port));
    let daemon = Daemon::start(&bin(), &config).await;
    // The portal's answer is no server's word on the token.
    let paired = pair_and_consent(&daemon).await;
    assert_eq!(paired["token_check"]["checked"], false, "{paired}");
    eventually(T, "captive_portal in blocked_by", || async {
        let (_, s) = daemon.api("GET", "/v1/status", None).await;
        let blocked = s["blocked_by"].as_array().cloned().unwrap_or_default();
        blocked.contains(&json!("captive_portal"))
    })
    .await;
    let (_, status) = daemon.api("GET", "/v1/status", None).await;
    let u = &status["unreachable"];
    assert_eq!(u["code"], "captive_portal", "{status:#}");
    assert_eq!(u["interface"], "wlan0", "{status:#}");
    let message = u["message"].as_str().unwrap();
    assert!(
        message.contains("302 redirecting to http://portal.example/login"),
        "{message}"
    );
    assert_eq!(
        status["manual_blocked_by"],
        json!(["captive_portal"]),
        "{status:#}"
    );

    // Not hammered: with the back-off capped at 2 s, the file would be tried every 2 s.
    let held = portal.requests();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        portal.requests(),
        held,
        "requests went on through the portal"
    );

    // The portal goes (the user signed in elsewhere, the network is another one): the tus
    // server answers on the same address. Nothing tries it until the network changes...
    let port = portal.port;
    portal.task.abort();
    let _ = portal.task.await; // the listener is closed once the task is gone
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the portal's port");
    let rx = Receiver::builder()
        .token(TOKEN)
        .listener(listener)
        .start()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(rx.requests().is_empty(), "{}", rx.request_summary());
    // ...which it does: the Wi-Fi's gateway is another one.
    cam.set_default_gateway("wlan0", [192, 168, 7, 1]);
    rx.wait_for_completed(1, T).await;
    assert!(rx.file_matches(&rel, &cam.media_path(&rel)));
    eventually(T, "the block lifted", || async {
        let (_, s) = daemon.api("GET", "/v1/status", None).await;
        s["unreachable"].is_null() && s["blocked_by"] == json!([])
    })
    .await;
}
