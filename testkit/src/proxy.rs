//! A TCP fault proxy on loopback: sits between a client (the daemon) and a server (a tus
//! receiver) and makes the network between them bad on demand.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards each accepted connection to the
//! upstream address. What it can do, all switchable while connections are open:
//! - [`Proxy::set_latency`]: every chunk forwarded (either direction) waits this long first;
//! - [`Proxy::set_rate`]: a bandwidth cap in bytes per second, per connection and direction;
//! - [`Proxy::reset_all`]: every open connection is reset (RST to the client);
//! - [`Proxy::set_refusing`]: new connections are reset as soon as they are accepted;
//! - [`Proxy::set_silent`]: half-open: connections stay open but nothing moves either way,
//!   like a NAT that dropped its state; when the silence ends, the connections that went
//!   silent are reset (they are dead, as they would be on a real network), new ones work;
//! - [`Proxy::black_hole_all`]: every open connection dies on the client's side only: the
//!   client gets an RST now, while the server's side stays open with nothing more sent and
//!   not closed for a while (then reset): a client whose network vanished (Wi-Fi gone), seen
//!   from the server, which still holds its request;
//! - [`Proxy::truncate_next_answer`]: the next connection's server-to-client stream is cut
//!   (FIN) after that many bytes: a truncated answer;
//! - [`Proxy::set_upstream`]: point new connections elsewhere (a server restarted on another
//!   port).
//!
//! Invariants: only loopback is ever dialled or bound; bytes are forwarded in order and
//! unchanged, or the connection ends; [`Proxy::clear`] brings back a plain pass-through.
//! The proxy runs on the current tokio runtime and stops when dropped.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read per forwarded chunk; small enough that a rate cap stays smooth.
const CHUNK: usize = 16 * 1024;

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes forwarded client to server.
    pub bytes_up: u64,
    /// Bytes forwarded server to client.
    pub bytes_down: u64,
    /// Connections the proxy reset or cut (any fault).
    pub cut: u64,
}

/// See the module docs.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    latency_us: AtomicU64,
    /// Bytes per second; 0 = no cap.
    rate: AtomicU64,
    refusing: AtomicBool,
    /// Bumped by `reset_all`; each connection resets when it changes.
    reset_gen: watch::Sender<u64>,
    /// Bumped by `black_hole_all` (with how long the server side stays open, µs); each
    /// connection black-holes when it changes.
    hole_gen: watch::Sender<(u64, u64)>,
    /// True while silent; connections that saw it true reset once it turns false.
    silent: watch::Sender<bool>,
    /// Armed truncation for the next connection (u64::MAX: none).
    truncate_next: AtomicU64,
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    cut: AtomicU64,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:PORT` (a free port) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy only forwards to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            latency_us: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            reset_gen: watch::channel(0).0,
            hole_gen: watch::channel((0, 0)).0,
            silent: watch::channel(false).0,
            truncate_next: AtomicU64::new(u64::MAX),
            connections: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, task }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path` (e.g. `/files/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// New connections go to `upstream` (must be loopback); open ones keep theirs.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        assert!(upstream.ip().is_loopback(), "loopback only, not {upstream}");
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Delay added before every forwarded chunk, both directions.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// The latency in force.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.shared.latency_us.load(Ordering::SeqCst))
    }

    /// Caps each connection's direction at `bytes_per_sec` (`None`: no cap).
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .rate
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
    }

    /// Resets every open connection now.
    pub fn reset_all(&self) {
        self.shared.reset_gen.send_modify(|g| *g += 1);
    }

    /// Every open connection dies on the client's side only: the client gets an RST now, the
    /// server's side is left open, silent, for `hold` (a request the server keeps waiting on),
    /// then reset. New connections work.
    pub fn black_hole_all(&self, hold: Duration) {
        let hold = hold.as_micros() as u64;
        self.shared.hole_gen.send_modify(|(g, h)| {
            *g += 1;
            *h = hold;
        });
    }

    /// While true, new connections are reset on accept (a server that is down).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// While true, nothing is forwarded on any connection, open or new (half-open). When it
    /// turns false, the connections that were silenced are reset.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.send_replace(silent);
    }

    /// The next accepted connection's answers are cut after `bytes` (then FIN both ways).
    pub fn truncate_next_answer(&self, bytes: u64) {
        self.shared.truncate_next.store(bytes, Ordering::SeqCst);
    }

    /// Back to a plain pass-through: no latency, no cap, not refusing, not silent, nothing
    /// armed. Open connections are left alone (a silenced one is reset, as documented).
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.set_rate(None);
        self.set_refusing(false);
        self.set_silent(false);
        self.shared.truncate_next.store(u64::MAX, Ordering::SeqCst);
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::SeqCst),
            bytes_up: s.bytes_up.load(Ordering::SeqCst),
            bytes_down: s.bytes_down.load(Ordering::SeqCst),
            cut: s.cut.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections end with the next reset signal they see.
        self.reset_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            shared.cut.fetch_add(1, Ordering::SeqCst);
            reset(client);
            continue;
        }
        let truncate = shared.truncate_next.swap(u64::MAX, Ordering::SeqCst);
        tokio::spawn(connection(client, shared.clone(), truncate));
    }
}

/// Closes `stream` with an RST.
fn reset(stream: TcpStream) {
    linger_zero(stream.as_raw_fd());
}

/// Why a connection ended.
enum End {
    /// One side closed; the other gets a FIN.
    Closed,
    /// A fault: the client gets an RST.
    Cut,
    /// A black hole: the client gets an RST, the server's side is held open this long.
    Hole(Duration),
}

async fn connection(client: TcpStream, shared: Arc<Shared>, truncate: u64) {
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(server) = TcpStream::connect(upstream).await else {
        shared.cut.fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    };
    let client_fd = client.as_raw_fd();
    let server_fd = server.as_raw_fd();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut reset_rx = shared.reset_gen.subscribe();
    reset_rx.borrow_and_update();
    let mut hole_rx = shared.hole_gen.subscribe();
    hole_rx.borrow_and_update();
    // The pumps own both sockets and close them when they drop, at the end of this block.
    let (end, held) = {
        let (cr, cw) = client.into_split();
        // Not `into_split`: its write half shuts the socket down (FIN) when dropped, which
        // would end a black-holed server side at once.
        let (sr, sw) = tokio::io::split(server);
        let up = pump(cr, sw, shared.clone(), u64::MAX, true);
        let down = pump(sr, cw, shared.clone(), truncate, false);
        tokio::pin!(up, down);
        let mut up_done = false;
        let end = loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    // The client finished sending: keep forwarding the answer, unless cut.
                    if let End::Cut = r { break End::Cut; }
                }
                // The answer ended (server closed, or truncated): the exchange is over.
                r = &mut down => break r,
                _ = reset_rx.changed() => break End::Cut,
                _ = hole_rx.changed() => {
                    let hold = hole_rx.borrow_and_update().1;
                    break End::Hole(Duration::from_micros(hold));
                }
            }
        };
        // A black hole keeps the server's socket open past the pumps: a second descriptor of
        // it, which nothing reads or writes.
        let held = match end {
            // SAFETY: `server_fd` is open (its half lives in `up`/`down` until the block ends);
            // dup returns a new descriptor we own, or -1.
            End::Hole(_) => match unsafe { libc::dup(server_fd) } {
                -1 => None,
                // SAFETY: a fresh descriptor from dup, owned by nobody else.
                fd => Some(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                }),
            },
            _ => None,
        };
        if !matches!(end, End::Closed) {
            shared.cut.fetch_add(1, Ordering::SeqCst);
            // The halves are still alive inside `up` and `down`, so the fd is open; they drop
            // (closing it, now with an RST) when this block ends.
            linger_zero(client_fd);
        }
        (end, held)
    };
    if let (End::Hole(hold), Some(held)) = (end, held) {
        tokio::time::sleep(hold).await;
        linger_zero(held.as_raw_fd());
    }
}

/// SO_LINGER 0 on an open socket: closing it sends RST instead of FIN.
fn linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid linger.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Forwards `from` to `to` with the current shaping; `limit` bytes at most (then FIN).
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    shared: Arc<Shared>,
    limit: u64,
    upward: bool,
) -> End {
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    let mut silent_rx = shared.silent.subscribe();
    loop {
        if sent >= limit {
            // A truncated answer: the client sees a clean FIN mid-message.
            let _ = to.shutdown().await;
            return End::Closed;
        }
        let want = CHUNK.min((limit - sent).min(CHUNK as u64) as usize);
        let n = tokio::select! {
            r = from.read(&mut buf[..want]) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return End::Closed;
                }
                Ok(n) => n,
            },
            // Silence also freezes a side that is only waiting to read.
            _ = wait_silent(&mut silent_rx) => {
                wait_loud(&mut silent_rx).await;
                return End::Cut;
            }
        };
        if *silent_rx.borrow_and_update() {
            wait_loud(&mut silent_rx).await;
            return End::Cut;
        }
        let latency = shared.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Cut;
        }
        sent += n as u64;
        let counter = if upward {
            &shared.bytes_up
        } else {
            &shared.bytes_down
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
        let rate = shared.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
}

async fn wait_silent(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn wait_loud(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| !*s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every connection with `answer` after reading one chunk.
    async fn upstream(answer: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    if s.read(&mut buf).await.unwrap_or(0) > 0 {
                        let _ = s.write_all(answer).await;
                    }
                });
            }
        });
        addr
    }

    async fn exchange(proxy: &Proxy) -> std::io::Result<Vec<u8>> {
        let mut c = TcpStream::connect(proxy.addr()).await?;
        c.write_all(b"ping").await?;
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e),
            }
            if out.len() >= 10 {
                return Ok(out);
            }
        }
    }

    #[tokio::test]
    async fn forwards_unchanged_and_counts() {
        let proxy = Proxy::start(upstream(b"0123456789").await).await;
        assert_eq!(exchange(&proxy).await.unwrap(), b"0123456789");
        let s = proxy.stats();
        assert_eq!((s.connections, s.bytes_up, s.bytes_down), (1, 4, 10));
    }

    #[tokio::test]
    async fn truncates_the_next_answer_only() {
        let proxy = Proxy::start(upstream(b"0123456789").await).await;
        proxy.truncate_next_answer(3);
        assert_eq!(exchange(&proxy).await.unwrap(), b"012");
        assert_eq!(exchange(&proxy).await.unwrap(), b"0123456789");
    }

    #[tokio::test]
    async fn refusing_resets_new_connections() {
        let proxy = Proxy::start(upstream(b"0123456789").await).await;
        proxy.set_refusing(true);
        let r = exchange(&proxy).await;
        assert!(r.is_err() || r.unwrap().is_empty());
        proxy.clear();
        assert_eq!(exchange(&proxy).await.unwrap(), b"0123456789");
    }

    #[tokio::test]
    async fn silence_holds_bytes_then_kills_the_connection() {
        let proxy = Proxy::start(upstream(b"0123456789").await).await;
        proxy.set_silent(true);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 16];
        let quiet = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(quiet.is_err(), "nothing may arrive while silent");
        proxy.set_silent(false);
        let after = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("the dead connection ends");
        assert!(after.is_err() || after.unwrap() == 0);
        assert_eq!(exchange(&proxy).await.unwrap(), b"0123456789");
    }

    #[tokio::test]
    async fn a_black_hole_resets_the_client_and_holds_the_server_side_open() {
        // An upstream that reports when its connection ends.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        let up = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            let _ = tx.send(std::time::Instant::now());
        });
        let proxy = Proxy::start(up).await;
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"PATCH").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        proxy.black_hole_all(Duration::from_millis(700));
        let mut buf = [0u8; 16];
        let client = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("the client's side ends at once");
        assert!(client.is_err() || client.unwrap() == 0);
        let server_end = tokio::time::timeout(Duration::from_secs(3), ended.recv())
            .await
            .expect("the server's side ends after the hold")
            .unwrap();
        assert!(
            server_end - t >= Duration::from_millis(700),
            "the server's side ended after {:?}",
            server_end - t
        );
        assert_eq!(proxy.stats().cut, 1);
    }

    #[tokio::test]
    async fn latency_and_rate_slow_the_exchange() {
        let proxy = Proxy::start(upstream(b"0123456789").await).await;
        proxy.set_latency(Duration::from_millis(100));
        let t = std::time::Instant::now();
        assert_eq!(exchange(&proxy).await.unwrap(), b"0123456789");
        // One chunk up, one chunk down.
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
    }
}
