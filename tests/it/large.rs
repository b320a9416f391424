//! Files over 4 GiB: every size, offset and length stays 64-bit from the card to the wire and
//! the database. Only a 32-bit build (armv7, where `usize` is 32 bits) could get this wrong, so
//! CI runs it against the armv7 binary under qemu-user too (docs/deploying.md, "Testing on the
//! target"). The file is sparse and the receiver keeps it sparse: neither side stores 4 GiB.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use testkit::camera::FakeCamera;
use testkit::daemon::Signal;
use testkit::tus::{Fault, Receiver};

use crate::common::{eventually, server_offset, Rig, TOKEN};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Past 2^32 by four chunks and an odd tail, so the last PATCH is short and unaligned.
const SIZE: u64 = 4 * GIB + 4 * CHUNK + 4321;
const CHUNK_MIB: u64 = 64;
const CHUNK: u64 = CHUNK_MIB * MIB;
/// Where in its body the first PATCH past 4 GiB stalls: an odd offset to resume from.
const STALL_AT: u64 = 12_345;
/// 4.3 GiB through the daemon, twice the time it takes under qemu-user on a 2-core CI machine
/// (docs/deploying.md has the measurement).
const T: Duration = Duration::from_secs(300);

/// Distinct non-zero bytes at `at`: where a 32-bit offset would wrap (4 GiB), the data read
/// there would be another marker's or zeros, and the comparison with the card fails.
fn marker(at: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| ((at >> 20) as u8) ^ (i as u8).wrapping_mul(31) | 1)
        .collect()
}

#[tokio::test]
async fn a_sparse_file_over_4_gib_uploads_and_resumes_after_a_kill_past_4_gib() {
    let cam = FakeCamera::new();
    // Fixed chunks: the stall below is found by its offset within a chunk.
    cam.with("cloud", "chunk_sizing", "\"fixed\"");
    cam.with("cloud", "chunk_size_mib", &CHUNK_MIB.to_string());
    let rel = "DCIM/100MEDIA/VID_4GIB.MP4";
    let path = cam.media_path(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = File::create(&path).unwrap();
    f.set_len(SIZE).unwrap();
    for at in [
        0,
        3 * GIB,
        4 * GIB - 2048,
        4 * GIB + CHUNK + 100,
        SIZE - 4096,
    ] {
        f.write_all_at(&marker(at), at).unwrap();
    }
    drop(f);
    cam.age_media(rel, Duration::from_secs(60));
    // Without the checksum extension: a PATCH cut short keeps the bytes that arrived, so the
    // resume starts at an odd offset past 4 GiB rather than at a chunk boundary.
    let rx = Receiver::builder()
        .token(TOKEN)
        .without_checksum()
        .start()
        .await;
    let mut rig = Rig::start_with(cam, rx).await;
    let started = Instant::now();
    rig.go().await;

    eventually(T, "4 GiB on the server", || async {
        server_offset(&rig.rx) >= 4 * GIB
    })
    .await;
    let item = &rig.items(None).await[0];
    assert_eq!(item["size"], SIZE, "the queue's size: {item}");
    let s = rig.status().await;
    assert_eq!(s["current"]["bytes_total"], SIZE, "{s:#}");
    assert!(
        s["current"]["bytes_sent"].as_u64().unwrap() >= 4 * GIB,
        "progress past 4 GiB: {s:#}"
    );

    // The next PATCH stalls STALL_AT bytes in; killed there, the daemon must resume at that
    // offset, past 2^32, not at a wrapped one or from the start.
    rig.rx
        .inject(Fault::stall_after(STALL_AT, Duration::from_secs(600)));
    eventually(T, "a PATCH stalled past 4 GiB", || async {
        let o = server_offset(&rig.rx);
        o > 4 * GIB && o % CHUNK == STALL_AT
    })
    .await;
    let stopped = server_offset(&rig.rx);
    let requests = rig.rx.requests().len();
    rig.daemon.kill(Signal::Kill);
    assert!(rig
        .daemon
        .wait_exit(Duration::from_secs(10))
        .await
        .is_some());
    rig.daemon.restart().await;

    rig.rx.wait_for_completed(1, T).await;
    let took = started.elapsed();
    let later = &rig.rx.requests()[requests..];
    let patch = later
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("a PATCH after the restart");
    assert_eq!(
        patch.header("upload-offset"),
        Some(stopped.to_string().as_str()),
        "resumed at the server's offset:{}",
        rig.rx.request_summary()
    );
    assert_eq!(rig.rx.creations(), 1, "{}", rig.rx.request_summary());
    let info = &rig.rx.completed_uploads()[0];
    assert_eq!((info.length, info.offset), (SIZE, SIZE));
    assert!(
        rig.rx.file_matches(rel, &rig.cam.media_path(rel)),
        "not byte-identical on the server"
    );
    eventually(T, "the item done with its full size", || async {
        let items = rig.items(Some("done")).await;
        items.len() == 1 && items[0]["size"] == SIZE && items[0]["bytes_sent"] == SIZE
    })
    .await;
    eprintln!("large: {SIZE} bytes uploaded with a kill at {stopped} in {took:?}");
}
