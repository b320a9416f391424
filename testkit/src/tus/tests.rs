use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::http::{request, send, RawResponse};
use crate::sample::sample_bytes;

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const OCTETS: (&str, &str) = ("content-type", "application/offset+octet-stream");

async fn call(
    rx: &Receiver,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let stream = TcpStream::connect(rx.addr()).await.unwrap();
    send(stream, request(method, url, headers, body))
        .await
        .unwrap()
}

/// Creates an upload of `len` bytes with the four contract metadata keys; returns its URL.
async fn create(rx: &Receiver, len: usize) -> String {
    let meta = format!(
        "user_id {},device_type {},serial_number {},storage_path {}",
        B64.encode("u1"),
        B64.encode("SJ10 Pro"),
        B64.encode("SN1"),
        B64.encode("DCIM/100MEDIA/A.JPG"),
    );
    let r = call(
        rx,
        "POST",
        &rx.url(),
        &[
            TUS,
            ("upload-length", &len.to_string()),
            ("upload-metadata", &meta),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.header("location").unwrap().to_owned()
}

async fn patch(rx: &Receiver, url: &str, offset: u64, body: &[u8]) -> RawResponse {
    let off = offset.to_string();
    call(
        rx,
        "PATCH",
        url,
        &[TUS, OCTETS, ("upload-offset", &off)],
        body.to_vec(),
    )
    .await
}

async fn head_offset(rx: &Receiver, url: &str) -> u64 {
    let r = call(rx, "HEAD", url, &[TUS], vec![]).await;
    assert_eq!(r.status, 200);
    r.header("upload-offset").unwrap().parse().unwrap()
}

/// Sends a PATCH over a raw socket and returns what came back (empty if the connection died).
async fn raw_patch(rx: &Receiver, url: &str, offset: u64, body: &[u8]) -> String {
    let path = url.trim_start_matches(&format!("http://{}", rx.addr()));
    let mut s = TcpStream::connect(rx.addr()).await.unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: x\r\ntus-resumable: 1.0.0\r\n\
         content-type: application/offset+octet-stream\r\nupload-offset: {offset}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may reset midway; a write error is the expected outcome then.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn options_announces_extensions_and_limits() {
    let rx = Receiver::builder()
        .max_size(1000)
        .expires_in(Duration::from_secs(60))
        .start()
        .await;
    let r = call(&rx, "OPTIONS", &rx.url(), &[], vec![]).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("tus-version"), Some("1.0.0"));
    assert_eq!(
        r.header("tus-extension"),
        Some("creation,termination,checksum,expiration")
    );
    assert_eq!(r.header("tus-max-size"), Some("1000"));
    assert_eq!(r.header("tus-checksum-algorithm"), Some("sha1"));

    let bare = Receiver::builder()
        .without_termination()
        .without_checksum()
        .start()
        .await;
    let r = call(&bare, "OPTIONS", &bare.url(), &[], vec![]).await;
    assert_eq!(r.header("tus-extension"), Some("creation"));
    assert_eq!(r.header("tus-checksum-algorithm"), None);
}

#[tokio::test]
async fn create_patch_head_completes_upload() {
    let rx = Receiver::start().await;
    let data = sample_bytes(1, 10_000);
    let url = create(&rx, data.len()).await;
    assert!(url.starts_with(&rx.url()), "Location is absolute: {url}");
    assert_eq!(rx.creations(), 1);

    let r = patch(&rx, &url, 0, &data[..4000]).await;
    assert_eq!((r.status, r.header("upload-offset")), (204, Some("4000")));
    let h = call(&rx, "HEAD", &url, &[TUS], vec![]).await;
    assert_eq!(h.header("upload-length"), Some("10000"));
    assert_eq!(h.header("cache-control"), Some("no-store"));
    assert_eq!(h.header("upload-offset"), Some("4000"));

    let r = patch(&rx, &url, 4000, &data[4000..]).await;
    assert_eq!(r.status, 204);
    let done = rx.wait_for_completed(1, Duration::from_secs(1)).await;
    assert_eq!(done[0].metadata.len(), 4);
    assert_eq!(done[0].metadata["device_type"], "SJ10 Pro");
    assert_eq!(rx.completed("DCIM/100MEDIA/A.JPG").unwrap(), data);

    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("a");
    std::fs::write(&local, &data).unwrap();
    assert!(rx.file_matches("DCIM/100MEDIA/A.JPG", &local));
    std::fs::write(&local, &data[1..]).unwrap();
    assert!(!rx.file_matches("DCIM/100MEDIA/A.JPG", &local));

    let patches = rx.requests_with_method("PATCH");
    assert_eq!(patches.len(), 2);
    assert_eq!(patches[1].body_len, 6000);
    assert_eq!(patches[1].header("upload-offset"), Some("4000"));
}

#[tokio::test]
async fn reset_mid_patch_keeps_received_bytes_and_resume_completes() {
    let rx = Receiver::start().await;
    let data = sample_bytes(2, 200_000);
    let url = create(&rx, data.len()).await;
    rx.inject(Fault::reset_after(70_000));

    let answer = raw_patch(&rx, &url, 0, &data).await;
    assert!(answer.is_empty(), "connection should die, got {answer:?}");
    assert_eq!(head_offset(&rx, &url).await, 70_000);
    assert_eq!(rx.requests_with_method("PATCH")[0].status, None);

    let r = patch(&rx, &url, 70_000, &data[70_000..]).await;
    assert_eq!(r.status, 204);
    assert_eq!(rx.completed("DCIM/100MEDIA/A.JPG").unwrap(), data);
}

#[tokio::test]
async fn stalled_patch_pauses_then_finishes() {
    let rx = Receiver::start().await;
    let data = sample_bytes(3, 50_000);
    let url = create(&rx, data.len()).await;
    rx.inject(Fault::stall_after(1000, Duration::from_millis(400)));
    let t = Instant::now();
    let r = patch(&rx, &url, 0, &data).await;
    assert_eq!(r.status, 204);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(rx.pending_faults(), 0);
}

#[tokio::test]
async fn checksum_is_verified() {
    let rx = Receiver::start().await;
    let data = sample_bytes(4, 5000);
    let url = create(&rx, data.len()).await;
    let good = format!("sha1 {}", B64.encode(Sha1::digest(&data)));
    let bad = format!("sha1 {}", B64.encode(Sha1::digest(b"other")));

    let r = call(
        &rx,
        "PATCH",
        &url,
        &[
            TUS,
            OCTETS,
            ("upload-offset", "0"),
            ("upload-checksum", &bad),
        ],
        data.clone(),
    )
    .await;
    assert_eq!(r.status, CHECKSUM_MISMATCH);
    assert_eq!(head_offset(&rx, &url).await, 0);

    let r = call(
        &rx,
        "PATCH",
        &url,
        &[
            TUS,
            OCTETS,
            ("upload-offset", "0"),
            ("upload-checksum", "md5 AAAA"),
        ],
        data.clone(),
    )
    .await;
    assert_eq!(r.status, 400);

    let r = call(
        &rx,
        "PATCH",
        &url,
        &[
            TUS,
            OCTETS,
            ("upload-offset", "0"),
            ("upload-checksum", &good),
        ],
        data.clone(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(rx.completed("DCIM/100MEDIA/A.JPG").unwrap(), data);
}

#[tokio::test]
async fn protocol_errors_have_the_right_status() {
    let rx = Receiver::builder().max_size(100).start().await;
    let url = create(&rx, 10).await;
    // Wrong content type, wrong offset, unknown upload, missing Tus-Resumable, too big.
    let r = call(
        &rx,
        "PATCH",
        &url,
        &[TUS, ("upload-offset", "0"), ("content-type", "text/plain")],
        vec![1],
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(patch(&rx, &url, 3, b"x").await.status, 409);
    assert_eq!(
        patch(&rx, &format!("{}nope", rx.url()), 0, b"x")
            .await
            .status,
        404
    );
    assert_eq!(call(&rx, "HEAD", &url, &[], vec![]).await.status, 412);
    let r = call(
        &rx,
        "POST",
        &rx.url(),
        &[TUS, ("upload-length", "101")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 413);
    let r = call(
        &rx,
        "POST",
        &rx.url(),
        &[TUS, ("upload-length", "1"), ("upload-metadata", "k !!")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(patch(&rx, &url, 0, &[0; 11]).await.status, 413);
    // Termination.
    assert_eq!(call(&rx, "DELETE", &url, &[TUS], vec![]).await.status, 204);
    assert_eq!(call(&rx, "HEAD", &url, &[TUS], vec![]).await.status, 404);
    assert!(rx.uploads()[0].terminated);
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let rx = Receiver::builder().token("s3cret").start().await;
    let r = call(
        &rx,
        "POST",
        &rx.url(),
        &[TUS, ("upload-length", "1")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = call(
        &rx,
        "POST",
        &rx.url(),
        &[
            TUS,
            ("upload-length", "1"),
            ("authorization", "Bearer s3cret"),
        ],
        vec![],
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        call(&rx, "OPTIONS", &rx.url(), &[], vec![]).await.status,
        204
    );
    assert_eq!(rx.requests()[0].header("authorization"), None);
    assert_eq!(
        rx.requests()[1].header("Authorization"),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn expiration_answers_410() {
    let rx = Receiver::builder()
        .expires_in(Duration::from_secs(3600))
        .start()
        .await;
    let data = sample_bytes(5, 10);
    let meta: [(&str, &str); 2] = [TUS, ("upload-length", "10")];
    let r = call(&rx, "POST", &rx.url(), &meta, vec![]).await;
    assert!(r.header("upload-expires").unwrap().ends_with("GMT"));
    let url = r.header("location").unwrap().to_owned();
    rx.expire(&rx.uploads()[0].id);
    assert_eq!(patch(&rx, &url, 0, &data).await.status, 410);
    assert_eq!(call(&rx, "HEAD", &url, &[TUS], vec![]).await.status, 410);
}

#[tokio::test]
async fn injected_status_faults_apply_n_times_in_order() {
    let rx = Receiver::start().await;
    let url = create(&rx, 4).await;
    rx.inject(Fault::server_errors(3));
    rx.inject(Fault::retry_after(429, 7).on("HEAD"));
    let mut seen = vec![];
    for _ in 0..3 {
        seen.push(call(&rx, "HEAD", &url, &[TUS], vec![]).await.status);
    }
    assert_eq!(seen, [500, 502, 503]);
    let r = call(&rx, "HEAD", &url, &[TUS], vec![]).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert_eq!(call(&rx, "HEAD", &url, &[TUS], vec![]).await.status, 200);

    // OPTIONS is left alone unless asked for.
    rx.inject(Fault::payment_required());
    assert_eq!(
        call(&rx, "OPTIONS", &rx.url(), &[], vec![]).await.status,
        204
    );
    assert_eq!(
        call(
            &rx,
            "POST",
            &rx.url(),
            &[TUS, ("upload-length", "1")],
            vec![]
        )
        .await
        .status,
        402
    );
    rx.inject(Fault::unauthorized().times(2));
    assert_eq!(patch(&rx, &url, 0, b"ab").await.status, 401);
    assert_eq!(patch(&rx, &url, 0, b"ab").await.status, 401);
    assert_eq!(patch(&rx, &url, 0, b"ab").await.status, 204);

    rx.inject(Fault::upload_not_found());
    rx.inject(Fault::head_offset(1));
    rx.inject(Fault::patch_conflict());
    assert_eq!(call(&rx, "HEAD", &url, &[TUS], vec![]).await.status, 404);
    assert_eq!(head_offset(&rx, &url).await, 1);
    assert_eq!(patch(&rx, &url, 2, b"cd").await.status, 409);
    assert_eq!(patch(&rx, &url, 2, b"cd").await.status, 204);
    assert_eq!(rx.pending_faults(), 0);
    assert!(rx.requests().iter().any(|r| r.fault.is_some()));
}

#[tokio::test]
async fn unavailable_server_resets_connections() {
    let rx = Receiver::start().await;
    rx.set_unavailable(true);
    let stream = TcpStream::connect(rx.addr()).await.unwrap();
    let res = send(stream, request("OPTIONS", &rx.url(), &[], vec![])).await;
    assert!(res.is_err());
    rx.set_unavailable(false);
    assert_eq!(
        call(&rx, "OPTIONS", &rx.url(), &[], vec![]).await.status,
        204
    );
}

#[tokio::test]
async fn relative_location_and_forgetting_unfinished_uploads() {
    let rx = Receiver::builder().relative_location().start().await;
    let data = sample_bytes(3, 5_000);
    let done = create(&rx, data.len()).await;
    assert!(done.starts_with("/files/"), "Location is relative: {done}");
    let done = format!("{}{}", rx.url().trim_end_matches("/files/"), done);
    assert_eq!(patch(&rx, &done, 0, &data).await.status, 204);
    let open = format!(
        "{}{}",
        rx.url().trim_end_matches("/files/"),
        create(&rx, data.len()).await
    );
    assert_eq!(patch(&rx, &open, 0, &data[..100]).await.status, 204);

    let forgotten = rx.forget_unfinished();
    assert_eq!(forgotten.len(), 1);
    assert_eq!(forgotten[0].offset, 100);
    assert_eq!(call(&rx, "HEAD", &open, &[TUS], vec![]).await.status, 404);
    assert_eq!(call(&rx, "HEAD", &done, &[TUS], vec![]).await.status, 200);
    assert_eq!(rx.uploads().len(), 1);
    let reqs = rx.requests();
    assert!(reqs.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn answer_pass_offset_ahead_never_answer_and_the_patch_hook() {
    let rx = Receiver::start().await;
    let url = create(&rx, 4).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    rx.on_patch(move |path| s.lock().unwrap().push(path.to_owned()));

    // A pass only takes its turn: the answer hits the second PATCH, after reading its body.
    rx.inject(Fault::pass().on("PATCH"));
    rx.inject(Fault::answer(403, &[("Retry-After", "9")], "subscription inactive").on("PATCH"));
    assert_eq!(patch(&rx, &url, 0, b"a").await.status, 204);
    let r = patch(&rx, &url, 1, b"b").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("retry-after"), Some("9"));
    assert_eq!(r.text(), "subscription inactive");
    assert_eq!(
        head_offset(&rx, &url).await,
        1,
        "the answered PATCH stored nothing"
    );

    // Stored, but acknowledged one byte ahead.
    rx.inject(Fault::patch_offset_ahead());
    let r = patch(&rx, &url, 1, b"b").await;
    assert_eq!((r.status, r.header("upload-offset")), (204, Some("3")));
    assert_eq!(head_offset(&rx, &url).await, 2);

    rx.inject(Fault::never_answer().on("HEAD"));
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        call(&rx, "HEAD", &url, &[TUS], vec![]),
    )
    .await;
    assert!(hung.is_err(), "a never-answered request must hang");
    assert_eq!(head_offset(&rx, &url).await, 2);

    let path = url.trim_start_matches(&format!("http://{}", rx.addr()));
    assert_eq!(*seen.lock().unwrap(), vec![path.to_owned(); 3]);
    assert_eq!(rx.pending_faults(), 0);
}
