//! A TCP proxy between rmq-bus and the broker that can cut every connection on demand, refuse
//! new ones for a while, or go silent (freeze) while keeping every connection open and still
//! accepting new ones: the network faults of the fault-injection tests. It forwards to the
//! broker of `RABBIT_MQ_URI`, and counts what it saw, so that tests wait on that rather than on
//! the clock.
#![allow(unreachable_pub, dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::node::Endpoint;

pub struct Proxy {
    pub port: u16,
    broker: Endpoint,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    links: Mutex<Vec<JoinHandle<()>>>,
    refusing: AtomicBool,
    /// Connections refused while refusing.
    refused: AtomicUsize,
    /// Connections accepted whose broker side could not be opened (the broker is down).
    unreachable: AtomicUsize,
    /// Whether the proxy is silent: it forwards nothing, either way, and closes nothing.
    frozen: Frozen,
    /// Connections accepted while frozen, held open without an answer.
    held: AtomicUsize,
    /// Of those, the ones their client gave up on and closed.
    held_closed: AtomicUsize,
}

struct Frozen(watch::Sender<bool>);

impl Default for Frozen {
    fn default() -> Self {
        Frozen(watch::channel(false).0)
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards to the broker of `RABBIT_MQ_URI`.
    pub async fn start() -> Proxy {
        let broker = Endpoint::from_env();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared::default());
        let (inner, upstream) = (shared.clone(), broker.upstream());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if inner.refusing.load(Ordering::SeqCst) {
                    inner.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let (upstream, counted) = (upstream.clone(), inner.clone());
                let link = if *inner.frozen.0.borrow() {
                    inner.held.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        // Takes what the client sends, answers nothing, until it hangs up.
                        let mut sink = [0u8; 1024];
                        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
                        counted.held_closed.fetch_add(1, Ordering::SeqCst);
                    })
                } else {
                    tokio::spawn(async move {
                        match TcpStream::connect(&upstream).await {
                            Ok(server) => {
                                let frozen = counted.frozen.0.subscribe();
                                let (client_read, client_write) = client.into_split();
                                let (server_read, server_write) = server.into_split();
                                tokio::join!(
                                    pump(client_read, server_write, frozen.clone()),
                                    pump(server_read, client_write, frozen),
                                );
                            }
                            Err(_) => {
                                counted.unreachable.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    })
                };
                let mut links = inner.links.lock().expect("lock");
                links.retain(|link| !link.is_finished());
                links.push(link);
            }
        });
        Proxy {
            port,
            broker,
            shared,
            acceptor,
        }
    }

    /// The broker URI through this proxy (credentials and vhost of `RABBIT_MQ_URI`).
    pub fn uri(&self) -> String {
        self.broker.via("127.0.0.1", self.port)
    }

    /// Connections open through the proxy now.
    pub fn open(&self) -> usize {
        let links = self.shared.links.lock().expect("lock");
        links.iter().filter(|link| !link.is_finished()).count()
    }

    /// Cuts every open connection, as a network failure would; returns how many were cut.
    pub fn cut(&self) -> usize {
        let links = std::mem::take(&mut *self.shared.links.lock().expect("lock"));
        let open = links.iter().filter(|link| !link.is_finished()).count();
        for link in links {
            link.abort();
        }
        open
    }

    /// Cuts every open connection and returns once both ends of each are closed; returns how
    /// many were cut.
    pub async fn cut_and_wait(&self) -> usize {
        let links = std::mem::take(&mut *self.shared.links.lock().expect("lock"));
        let open = links.iter().filter(|link| !link.is_finished()).count();
        for link in links {
            link.abort();
            let _ = link.await;
        }
        open
    }

    /// Refuses (or accepts again) new connections: an outage, not just a blip.
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Freezes (or thaws) the proxy: while frozen, nothing is forwarded either way and nothing
    /// is closed, and new connections are taken and held without an answer, as a node behind a
    /// dead NAT entry, or a frozen VM, looks.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.0.send_replace(frozen);
    }

    /// Connections taken while frozen, and of those, the ones their client closed.
    pub fn held(&self) -> (usize, usize) {
        (
            self.shared.held.load(Ordering::SeqCst),
            self.shared.held_closed.load(Ordering::SeqCst),
        )
    }

    /// Connections refused so far: attempts made during an outage.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections the proxy took but could not carry on to the broker (it was down).
    pub fn unreachable(&self) -> usize {
        self.shared.unreachable.load(Ordering::SeqCst)
    }
}

/// Forwards one direction until either end closes, holding whatever it read while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}
