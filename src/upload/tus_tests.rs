use std::time::Duration;

use testkit::tus::{Fault, Receiver};

use super::*;

/// The `Tus-Max-Size` the test servers announce.
const MAX_SIZE: u64 = 1 << 30;

/// testkit's receiver set up as the client's tests expect a tus server (as the in-module
/// test server this replaced was): creation, termination, sha1 checksums and expiration
/// (uploads expire after a day) offered, `Tus-Max-Size` announced, and path-absolute
/// `Location`s, which the client must resolve against the endpoint.
pub(crate) fn receiver() -> testkit::tus::ReceiverBuilder {
    Receiver::builder()
        .expires_in(Duration::from_secs(86_400))
        .max_size(MAX_SIZE)
        .relative_location()
}

fn cloud(stall_secs: u64) -> config::Cloud {
    config::Cloud {
        stall_secs,
        ..Default::default()
    }
}

/// A client whose `cloud.endpoint` is `endpoint` (the token goes only to its origin).
fn client_for(endpoint: &str) -> Client {
    Client::new(&config::Cloud {
        endpoint: endpoint.into(),
        ..cloud(5)
    })
    .unwrap()
}

fn token() -> Secret {
    Secret::new("tok-1")
}

/// A PATCH body of `bytes` in one block.
fn body(
    bytes: &'static [u8],
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::iter([Ok(Bytes::from_static(bytes))])
}

#[test]
fn locations_resolve_against_the_endpoint_and_keep_the_https_rule() {
    let ep = "https://up.example.com/files/";
    let cases: &[(&str, Option<&str>)] = &[
        ("/files/abc", Some("https://up.example.com/files/abc")),
        ("abc", Some("https://up.example.com/files/abc")),
        (
            "https://up.example.com:443/u/1",
            Some("https://up.example.com/u/1"),
        ),
        // The token goes only to the endpoint's origin: another host, port or scheme is
        // refused, however it is spelled.
        ("https://cdn.example.com/u/1", None),
        ("https://up.example.com:8443/u/1", None),
        ("//cdn.example.com/u/1", None),
        ("http://up.example.com/u/1", None),
        ("http://evil.example.com/u/1", None),
        ("ftp://up.example.com/x", None),
        // A plain http service on the camera or its LAN: never from an https endpoint.
        ("http://127.0.0.1:8080/files/x", None),
        ("http://localhost:8080/files/x", None),
        ("https://127.0.0.1/files/x", None),
        ("https://[::1]/files/x", None),
        ("https://169.254.1.1/files/x", None),
        ("https://[fe80::1]/files/x", None),
        ("https://192.168.1.1/files/x", None),
        ("https://10.0.0.1/files/x", None),
        ("https://100.64.0.1/files/x", None),
        ("https://[fd00::1]/files/x", None),
        ("https://[::ffff:192.168.1.1]/files/x", None),
    ];
    for (loc, want) in cases {
        assert_eq!(resolve_location(ep, loc).ok().as_deref(), *want, "{loc}");
    }
    // A loopback or LAN endpoint (a test rig, a NAS) keeps its own origin.
    let local = "http://127.0.0.1:1080/files/";
    assert_eq!(
        resolve_location(local, "/files/x").ok().as_deref(),
        Some("http://127.0.0.1:1080/files/x")
    );
    assert!(resolve_location(local, "http://127.0.0.1:9999/files/x").is_err());
    let lan = "https://192.168.1.20/files/";
    assert!(resolve_location(lan, "https://192.168.1.20/files/x").is_ok());
    assert!(resolve_location(lan, "https://192.168.1.21/files/x").is_err());
}

#[test]
fn a_refused_location_says_why() {
    let ep = "https://up.example.com/files/";
    let why = |loc: &str| resolve_location(ep, loc).unwrap_err().to_string();
    assert!(why("http://127.0.0.1:8080/x").contains("https only"));
    assert!(why("https://127.0.0.1/x").contains("loopback"));
    assert!(why("https://192.168.1.1/x").contains("private"));
    assert!(why("https://[fe80::1]/x").contains("link-local"));
    let other = why("https://cdn.example.com/x");
    assert!(other.contains("https://up.example.com"), "{other}");
    assert!(other.contains("`location`"), "{other}");
}

#[test]
fn server_messages_become_one_short_line() {
    assert_eq!(summarize(b"  no\n  such\tupload "), "no such upload");
    let long = "x".repeat(500);
    let s = summarize(long.as_bytes());
    assert_eq!(s.chars().count(), ERROR_BODY_KEEP + 1);
    assert!(s.ends_with('…'));
}

#[test]
fn transient_classification_follows_the_contract() {
    let st = |status| TusError::Status {
        method: "PATCH",
        url: "u".into(),
        status,
        message: String::new(),
        retry_after: None,
    };
    for s in [408, 409, 423, 429, 460, 500, 502, 503, 504] {
        assert!(st(s).is_transient(), "{s}");
    }
    for s in [400, 401, 402, 403, 404, 410, 413, 415] {
        assert!(!st(s).is_transient(), "{s}");
    }
    assert!(st(404).is_gone() && st(410).is_gone() && !st(409).is_gone());
}

#[tokio::test]
async fn discovery_is_cached_per_endpoint_and_parsed() {
    let srv = receiver().start().await;
    let c = client_for(&srv.url());
    let caps = c.options(&srv.url(), &token()).await.unwrap();
    assert_eq!(caps.versions, vec!["1.0.0"]);
    assert!(caps.has("creation") && caps.termination() && caps.sha1_checksum());
    assert_eq!(caps.max_size, Some(MAX_SIZE));
    c.options(&srv.url(), &token()).await.unwrap();
    assert_eq!(srv.requests_with_method("OPTIONS").len(), 1);
}

#[tokio::test]
async fn create_head_patch_terminate_round_trip() {
    let srv = receiver().start().await;
    let c = client_for(&srv.url());
    let path = crate::media::StoragePath::from_relative(std::path::Path::new("A.JPG")).unwrap();
    let md = UploadMetadata::new("u", "T", "S", &path);
    let created = c.create(&srv.url(), 5, &md, &token()).await.unwrap();
    // The test server answers a path-absolute Location: it must come back absolute.
    assert!(created.url.starts_with(&srv.url()), "{}", created.url);
    assert!(created.expires_at.unwrap() > crate::clock::now_unix());
    let st = c.head(&created.url, &token()).await.unwrap();
    assert_eq!((st.offset, st.length), (0, Some(5)));
    let ack = c
        .patch(&created.url, &token(), 0, body(b"hel"), 3, None, &|_| {})
        .await
        .unwrap();
    assert_eq!(ack.offset, 3);
    // A server acknowledging another offset than sent is an error, never a success.
    srv.inject(Fault::patch_offset_ahead());
    let e = c
        .patch(&created.url, &token(), 3, body(b"lo"), 2, None, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(e, TusError::WrongOffset { expected: 5, .. }),
        "{e}"
    );
    assert!(c.terminate(&created.url, &token()).await.unwrap());
    let e = c.head(&created.url, &token()).await.unwrap_err();
    assert!(e.is_gone(), "{e}");
}

#[tokio::test]
async fn terminate_is_false_when_the_server_does_not_offer_it() {
    // Offering only `creation`.
    let srv = Receiver::builder()
        .without_termination()
        .without_checksum()
        .start()
        .await;
    let c = client_for(&srv.url());
    let url = format!("{}1", srv.url());
    assert!(!c.terminate(&url, &token()).await.unwrap());
    assert_eq!(srv.requests_with_method("DELETE").len(), 0);
}

#[tokio::test]
async fn a_missing_location_is_an_error_that_says_so() {
    let srv = receiver().start().await;
    srv.inject(Fault::answer(201, &[], "").on("POST"));
    let c = client_for(&srv.url());
    let path = crate::media::StoragePath::from_relative(std::path::Path::new("A.JPG")).unwrap();
    let md = UploadMetadata::new("u", "T", "S", &path);
    let e = c.create(&srv.url(), 1, &md, &token()).await.unwrap_err();
    assert!(e.to_string().contains("lacks the `location` header"), "{e}");
}

/// Issue 22 item 7: an https endpoint answers a creation with a `Location` on a plain http
/// service of the camera itself. Nothing reaches that service, least of all the token:
/// neither the creation's answer nor a later request with that URL.
#[tokio::test]
async fn an_https_endpoint_cannot_steer_the_token_to_plain_http_on_the_camera() {
    let on_camera = receiver().start().await;
    let ca = testkit::tls::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = receiver()
        .listener(listener)
        .tls(ca.server_config(&["localhost"]))
        .base_url(format!("https://localhost:{port}"))
        .start()
        .await;
    let steer = format!("{}x", on_camera.url());
    srv.inject(Fault::answer(201, &[("location", &steer), ("upload-offset", "0")], "").on("POST"));
    let c = Client::new(&config::Cloud {
        endpoint: srv.url(),
        ca_file: Some(ca.write_pem(dir.path())),
        ..cloud(5)
    })
    .unwrap();
    let path = crate::media::StoragePath::from_relative(std::path::Path::new("A.JPG")).unwrap();
    let md = UploadMetadata::new("u", "T", "S", &path);
    let e = c.create(&srv.url(), 5, &md, &token()).await.unwrap_err();
    assert!(
        matches!(
            &e,
            TusError::BadHeader {
                header: "location",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("https only"), "{e}");
    // An upload URL from elsewhere (stored by an older release, say) is refused before any
    // connection, whatever asks.
    let e = c.head(&steer, &token()).await.unwrap_err();
    assert!(matches!(&e, TusError::ForeignUrl { .. }), "{e}");
    assert!(!e.is_transient());
    let e = c
        .patch(&steer, &token(), 0, body(b"hello"), 5, None, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(&e, TusError::ForeignUrl { .. }), "{e}");
    assert!(c.terminate(&steer, &token()).await.is_err());
    assert_eq!(
        on_camera.request_summary(),
        "",
        "the camera's service was reached"
    );
    assert_eq!(srv.requests_with_method("POST").len(), 1);
}

/// An HTTP redirect is never followed: the token would go with it to another origin.
#[tokio::test]
async fn redirects_are_not_followed() {
    let other = receiver().start().await;
    let srv = receiver().start().await;
    let elsewhere = format!("{}x", other.url());
    for status in [301, 302, 307, 308] {
        srv.inject(Fault::answer(status, &[("location", &elsewhere)], "").on("POST"));
        srv.inject(Fault::answer(status, &[("location", &elsewhere)], "").on("HEAD"));
    }
    let c = client_for(&srv.url());
    let path = crate::media::StoragePath::from_relative(std::path::Path::new("A.JPG")).unwrap();
    let md = UploadMetadata::new("u", "T", "S", &path);
    let upload = format!("{}1", srv.url());
    for status in [301, 302, 307, 308] {
        let e = c.create(&srv.url(), 5, &md, &token()).await.unwrap_err();
        assert_eq!(e.status(), Some(status), "{e}");
        let e = c.head(&upload, &token()).await.unwrap_err();
        assert_eq!(e.status(), Some(status), "{e}");
    }
    assert_eq!(other.request_summary(), "", "a redirect was followed");
}

/// Accepts connections on `[::]:0` (dual-stack), answers 204 and sends each peer address.
async fn peer_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<std::net::IpAddr>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("[::]:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = tx.send(peer.ip().to_canonical());
            // The request (small, one read), then the answer.
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (port, rx)
}

#[tokio::test]
async fn bound_clients_connect_only_the_way_they_are_bound() {
    let (port, mut peers) = peer_server().await;
    let url = format!("http://localhost:{port}/");
    let get = |b: Binding| {
        let url = url.clone();
        async move { build(&cloud(5), &b).unwrap().get(&url).send().await }
    };
    // Device binding to lo reaches a server on lo.
    get(Binding::Device("lo".into())).await.unwrap();
    assert_eq!(peers.recv().await.unwrap().to_string(), "127.0.0.1");
    // To an interface that is not there: no connection at all.
    let e = get(Binding::Device("no-such-if0".into()))
        .await
        .unwrap_err();
    assert!(chain(&e).contains("bind interface"), "{}", chain(&e));
    // Address binding: from that address, and lookups keep only its family, so a name
    // without an address of that family is refused rather than reached unbound.
    let v4 = Binding::Address {
        interface: "lo".into(),
        addr: "127.0.0.1".parse().unwrap(),
    };
    get(v4).await.unwrap();
    assert_eq!(peers.recv().await.unwrap().to_string(), "127.0.0.1");
    let v6 = Binding::Address {
        interface: "lo".into(),
        addr: "::1".parse().unwrap(),
    };
    let only_v4 = !tokio::net::lookup_host(("localhost", 0))
        .await
        .unwrap()
        .any(|a| a.is_ipv6());
    match get(v6).await {
        Ok(_) => assert_eq!(peers.recv().await.unwrap().to_string(), "::1"),
        Err(e) => {
            assert!(only_v4, "{}", chain(&e));
            assert!(chain(&e).contains("no IPv6 address"), "{}", chain(&e));
        }
    }
    assert!(
        peers.try_recv().is_err(),
        "a connection that should not have been made"
    );
}

#[tokio::test]
async fn with_no_approved_interface_nothing_is_sent_but_loopback_still_is() {
    let (port, mut peers) = peer_server().await;
    let c = Client::new(&config::Cloud {
        endpoint: "https://upload.example.com/files/".into(),
        // A loopback endpoint beside it (a test rig): its origin may get the token.
        regions: [("lab".to_string(), format!("http://127.0.0.1:{port}/"))].into(),
        ..cloud(5)
    })
    .unwrap();
    assert_eq!(c.rebind(None), Binding::Refused);
    let e = c
        .head("https://upload.example.com/files/x", &token())
        .await
        .unwrap_err();
    assert!(matches!(e, TusError::NoUplink), "{e}");
    assert!(e.is_transient());
    // A loopback URL never leaves the device: it is not held back by the binding.
    let _ = c
        .head(&format!("http://127.0.0.1:{port}/x"), &token())
        .await;
    assert_eq!(peers.recv().await.unwrap().to_string(), "127.0.0.1");
}

/// A kernel timeout (`ETIMEDOUT` from `TCP_USER_TIMEOUT`: a link gone silent) or an unreachable
/// host reaches the client as reqwest > hyper > `io::Error`, sometimes wrapped in another
/// `io::Error` (whose own `source` skips it). Found anywhere in the chain, it makes the failure
/// a stall or a path that is down, which the prompt resume must not try again at once (under
/// qemu the kernel's timer fired first; the upload stopped after two `stall_secs`).
#[test]
fn a_kernel_timeout_or_unreachable_host_is_found_anywhere_in_the_chain() {
    use std::io::{Error as Io, ErrorKind as K};
    #[derive(Debug)]
    struct Wrap(Io);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let timeout = Wrap(Io::from(K::TimedOut));
    assert!(io_kind_in(&timeout, &[K::TimedOut]));
    let wrapped = Wrap(Io::other(Io::from(K::HostUnreachable)));
    assert!(io_kind_in(
        &wrapped,
        &[K::HostUnreachable, K::NetworkUnreachable]
    ));
    assert!(!io_kind_in(&wrapped, &[K::TimedOut]));
    let reset = Wrap(Io::from(K::ConnectionReset));
    assert!(!io_kind_in(&reset, &[K::TimedOut, K::HostUnreachable]));
}

/// A request whose answer does not come within `stall_secs` is a stall (never a cut tried
/// again at once), and a connection refused is a cut that is: the real errors, from a
/// loopback peer that accepts and says nothing, and a port nobody listens on.
#[tokio::test]
async fn a_silent_peer_is_a_stall_and_a_refused_connection_a_cut() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}/files/");
    let c = Client::new(&config::Cloud {
        endpoint: endpoint.clone(),
        ..cloud(1)
    })
    .unwrap();
    let e = c.head(&format!("{endpoint}x"), &token()).await.unwrap_err();
    assert!(matches!(e, TusError::Stalled { .. }), "{e}");
    assert!(!super::super::prompt::is_prompt(&e), "{e}");
    hold.abort();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}/files/");
    let c = client_for(&endpoint);
    let e = c.head(&format!("{endpoint}x"), &token()).await.unwrap_err();
    assert!(matches!(e, TusError::Network { .. }), "{e}");
    assert!(!e.unreachable(), "{e}");
    assert!(super::super::prompt::is_prompt(&e), "{e}");
}

/// Pairing's check: one authenticated `HEAD` of the endpoint; 401 refuses the token, any other
/// answer (the receiver answers a `HEAD` of its creation URL 405) does not.
#[tokio::test]
async fn the_token_check_tells_a_refused_token_from_an_accepted_one() {
    let srv = receiver().token("tok-1").start().await;
    let c = client_for(&srv.url());
    let d = Duration::from_secs(5);
    let v = c
        .check_token(&srv.url(), &Secret::new("wrong"), d)
        .await
        .unwrap();
    // A HEAD's answer has no body: no message to show.
    assert!(
        matches!(&v, TokenVerdict::Refused { status: 401, .. }),
        "{v:?}"
    );
    let v = c.check_token(&srv.url(), &token(), d).await.unwrap();
    assert_eq!(v, TokenVerdict::Accepted { status: 405 });
    // Again, on the kept connection (the app may pair several times in a row).
    for t in ["wrong-2", "wrong-3"] {
        let v = c.check_token(&srv.url(), &Secret::new(t), d).await.unwrap();
        assert!(
            matches!(&v, TokenVerdict::Refused { status: 401, .. }),
            "{v:?}"
        );
    }
    let checks = srv.token_checks();
    assert_eq!(checks.len(), 4, "{checks:?}");
    assert!(srv.requests().is_empty(), "{}", srv.request_summary());
}

#[test]
fn a_receipt_is_the_sha256_member_of_repr_digest_and_anything_else_is_none() {
    use base64::Engine as _;
    let d = [9u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(d);
    let one = format!("sha-256=:{b64}:");
    assert_eq!(parse_repr_digest([one.as_str()]), Receipt::Sha256(d));
    // Among other algorithms, over two header lines, with a parameter.
    let other = "sha-512=:AAAA:";
    let two = format!("unixsum=:AA==:, sha-256=:{b64}:;p=1");
    assert_eq!(parse_repr_digest([other, two.as_str()]), Receipt::Sha256(d));
    assert_eq!(parse_repr_digest([] as [&str; 0]), Receipt::None);
    assert_eq!(parse_repr_digest(["sha-512=:AAAA:"]), Receipt::None);
    assert!(matches!(
        parse_repr_digest(["sha-256=:AAAA:"]),
        Receipt::Malformed(_)
    ));
    assert!(matches!(
        parse_repr_digest([format!("sha-256={b64}").as_str()]),
        Receipt::Malformed(_)
    ));
    // A key given twice counts by its last value (RFC 8941 section 3.2), on one line or
    // across lines: a stale or malformed first one neither hides nor replaces the last.
    let e = [7u8; 32];
    let e64 = base64::engine::general_purpose::STANDARD.encode(e);
    let twice = format!("sha-256=:{b64}:, sha-256=:{e64}:");
    assert_eq!(parse_repr_digest([twice.as_str()]), Receipt::Sha256(e));
    let later = format!("sha-256=:{e64}:");
    assert_eq!(
        parse_repr_digest(["sha-256=:AAAA:", later.as_str()]),
        Receipt::Sha256(e)
    );
    assert!(matches!(
        parse_repr_digest([one.as_str(), "sha-256=:AAAA:"]),
        Receipt::Malformed(_)
    ));
}
