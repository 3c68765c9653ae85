//! A TCP proxy on loopback that can cut what passes through it. The fault test
//! puts one between each broker and each etcd member (to cut a broker off from
//! etcd) and one in front of the brokers: the address node daemons dial, which
//! follows whichever broker leads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a proxy treats its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Bytes pass both ways.
    Open,
    /// Nothing passes either way and nothing is lost: what was sent waits (in
    /// the proxy and the kernel's socket buffers) and arrives when the cut
    /// heals, like a network that stalls. New connections are accepted and
    /// stall too. A request sent into a stall may be applied long after its
    /// sender gave up on it.
    Stall,
    /// Every connection is closed, and new ones are closed as soon as they are
    /// accepted, like a peer that is gone.
    Reset,
}

/// A running proxy; it stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    address: SocketAddr,
    cut: watch::Sender<Cut>,
    target: watch::Sender<Option<SocketAddr>>,
    connections: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port to `target` (none yet: connections are
    /// closed until [`set_target`](Self::set_target) names one).
    pub async fn start(target: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port for a proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let (cut, _) = watch::channel(Cut::Open);
        let (target_sender, _) = watch::channel(target);
        let connections = Arc::new(AtomicU64::new(0));
        let accepting = tokio::spawn(accept(listener, cut.subscribe(), target_sender.subscribe(), connections.clone()));
        Proxy { address, cut, target: target_sender, connections, accepting }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Cuts or heals the traffic.
    pub fn set_cut(&self, cut: Cut) {
        self.cut.send_replace(cut);
    }

    /// Sends new connections to `target`; connections to a former target are closed.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        self.target.send_if_modified(|current| {
            let changed = *current != target;
            *current = target;
            changed
        });
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        // Connection tasks end when they see the senders gone.
        self.cut.send_replace(Cut::Reset);
    }
}

async fn accept(
    listener: TcpListener,
    cut: watch::Receiver<Cut>,
    target: watch::Receiver<Option<SocketAddr>>,
    connections: Arc<AtomicU64>,
) {
    loop {
        let Ok((downstream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        connections.fetch_add(1, Ordering::Relaxed);
        if *cut.borrow() == Cut::Reset {
            continue;
        }
        let Some(upstream) = *target.borrow() else { continue };
        tokio::spawn(relay(downstream, upstream, cut.clone(), target.clone()));
    }
}

/// One connection: waits out a stall before connecting upstream, then pumps
/// both ways until both sides close, the proxy resets, or the target moves.
async fn relay(
    downstream: TcpStream,
    upstream_address: SocketAddr,
    mut cut: watch::Receiver<Cut>,
    mut target: watch::Receiver<Option<SocketAddr>>,
) {
    if !open(&mut cut).await {
        return;
    }
    let Ok(Ok(upstream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream_address)).await
    else {
        return;
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    let (outward, inward) = (cut.clone(), cut.clone());
    let both = async {
        tokio::join!(pump(down_read, up_write, outward), pump(up_read, down_write, inward));
    };
    let reset = async {
        while *cut.borrow_and_update() != Cut::Reset {
            if cut.changed().await.is_err() {
                return;
            }
        }
    };
    let moved = async {
        while *target.borrow_and_update() == Some(upstream_address) {
            if target.changed().await.is_err() {
                return;
            }
        }
    };
    // Returning drops both sockets: the connection closes.
    tokio::select! {
        () = both => {}
        () = reset => {}
        () = moved => {}
    }
}

/// Waits while the traffic stalls; false once it is reset (or the proxy is gone).
async fn open(cut: &mut watch::Receiver<Cut>) -> bool {
    loop {
        match *cut.borrow_and_update() {
            Cut::Open => return true,
            Cut::Reset => return false,
            Cut::Stall => {}
        }
        if cut.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction. Bytes read while the traffic stalls are held until it
/// opens again (the rest waits in the kernel's buffers).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<Cut>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !open(&mut cut).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // A stall or reset began: look again before reading on.
            changed = cut.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let count = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(count) => count,
        };
        if !open(&mut cut).await {
            return;
        }
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(count) = socket.read(&mut buffer).await {
                        if count == 0 || socket.write_all(&buffer[..count]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8], limit: Duration) -> Option<Vec<u8>> {
        stream.write_all(text).await.ok()?;
        let mut buffer = vec![0u8; text.len()];
        match tokio::time::timeout(limit, stream.read_exact(&mut buffer)).await {
            Ok(Ok(_)) => Some(buffer),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_until_it_heals_and_a_reset_closes() {
        let proxy = Proxy::start(Some(echo_server().await)).await;
        let mut stream = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut stream, b"one", Duration::from_secs(2)).await.as_deref(), Some(&b"one"[..]));

        proxy.set_cut(Cut::Stall);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(round_trip(&mut stream, b"two", Duration::from_millis(300)).await, None, "a stall let bytes by");
        proxy.set_cut(Cut::Open);
        let mut late = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut late))
            .await
            .expect("the stalled bytes arrive after the stall")
            .expect("read");
        assert_eq!(&late, b"two");

        proxy.set_cut(Cut::Reset);
        let mut rest = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await.expect("closed soon");
        assert!(matches!(closed, Ok(0) | Err(_)), "a reset left the connection open");
    }

    #[tokio::test]
    async fn connections_follow_the_target_and_close_when_it_moves() {
        let proxy = Proxy::start(None).await;
        let mut refused = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(round_trip(&mut refused, b"x", Duration::from_millis(300)).await, None);

        proxy.set_target(Some(echo_server().await));
        let mut stream = TcpStream::connect(proxy.address()).await.expect("connect");
        assert!(round_trip(&mut stream, b"hello", Duration::from_secs(2)).await.is_some());
        proxy.set_target(Some(echo_server().await));
        let mut rest = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest)).await.expect("closed soon");
        assert!(matches!(closed, Ok(0) | Err(_)), "a connection to the former target stayed open");
        let mut again = TcpStream::connect(proxy.address()).await.expect("connect");
        assert!(round_trip(&mut again, b"again", Duration::from_secs(2)).await.is_some());
        assert_eq!(proxy.connections(), 3);
    }
}
