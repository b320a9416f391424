use std::os::unix::fs::FileExt;
use std::sync::Arc;
fn main() {
    let rt = if std::env::var("MT").is_ok() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(run());
}
async fn run() {
    let a: Vec<String> = std::env::args().collect();
    let (url, path, block, mode) = (&a[1], &a[2], a[3].parse::<usize>().unwrap(), a[4].as_str());
    let file = Arc::new(std::fs::File::open(path).unwrap());
    let len = file.metadata().unwrap().len();
    let mut b = reqwest::Client::builder();
    if std::env::var("UT").is_ok() {
        b = b.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
    if std::env::var("KA").is_ok() {
        b = b.tcp_keepalive(std::time::Duration::from_secs(30));
    }
    let client = b.build().unwrap();
    let body = if mode == "mem" {
        let mut v = vec![0u8; len as usize];
        file.read_exact_at(&mut v, 0).unwrap();
        reqwest::Body::from(v)
    } else if mode.starts_with("pool") {
        let f = file.clone();
        let pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        let s = futures_util::stream::unfold(0u64, move |at| {
            let f = f.clone();
            let pool = pool.clone();
            async move {
                if at >= len {
                    return None;
                }
                let want = (len - at).min(block as u64) as usize;
                let mut buf = pool
                    .lock()
                    .unwrap()
                    .pop()
                    .unwrap_or_else(|| vec![0u8; block]);
                use std::os::fd::AsRawFd;
                let iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: want,
                };
                let n = unsafe {
                    libc::preadv64v2(f.as_raw_fd(), &iov, 1, at as i64, libc::RWF_NOWAIT)
                };
                assert_eq!(n, want as isize);
                struct B {
                    buf: Vec<u8>,
                    len: usize,
                    home: std::sync::Weak<std::sync::Mutex<Vec<Vec<u8>>>>,
                }
                impl AsRef<[u8]> for B {
                    fn as_ref(&self) -> &[u8] {
                        &self.buf[..self.len]
                    }
                }
                impl Drop for B {
                    fn drop(&mut self) {
                        if let Some(h) = self.home.upgrade() {
                            h.lock().unwrap().push(std::mem::take(&mut self.buf));
                        }
                    }
                }
                let b = B {
                    buf,
                    len: want,
                    home: Arc::downgrade(&pool),
                };
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from_owner(b)),
                    at + want as u64,
                ))
            }
        });
        reqwest::Body::wrap_stream(s)
    } else {
        let f = file.clone();
        let s = futures_util::stream::unfold(0u64, move |at| {
            let f = f.clone();
            async move {
                if at >= len {
                    return None;
                }
                let want = (len - at).min(block as u64) as usize;
                let mut buf = vec![0u8; want];
                f.read_exact_at(&mut buf, at).unwrap();
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                    at + want as u64,
                ))
            }
        });
        reqwest::Body::wrap_stream(s)
    };
    let url = if std::env::var("POST").is_ok() {
        let r = client
            .post(std::env::var("POST").unwrap())
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", len)
            .header("Authorization", "Bearer bench-token")
            .header("Content-Length", 0)
            .send()
            .await
            .unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let _ = r.bytes().await;
        if loc.starts_with("http") {
            loc
        } else {
            format!("{}{}", url.trim_end_matches('/'), loc)
        }
    } else {
        url.to_string()
    };
    let t = std::time::Instant::now();
    let r = client
        .patch(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Authorization", "Bearer bench-token")
        .header("Content-Length", len)
        .body(body)
        .send();
    let r = if mode.ends_with("tick") {
        tokio::pin!(r);
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                x = &mut r => break x.unwrap(),
                _ = ticker.tick() => {}
            }
        }
    } else {
        r.await.unwrap()
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{mode} block={block} status={} {:.1} MiB/s",
        r.status(),
        len as f64 / secs / 1048576.0
    );
}
