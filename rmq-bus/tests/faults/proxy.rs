//! A TCP proxy between rmq-bus and the broker that can cut every connection on demand, or refuse
//! new ones for a while: the network faults of the fault-injection tests. It forwards to the
//! broker of `RABBIT_MQ_URI`, and counts what it saw, so that tests wait on that rather than on
//! the clock.
#![allow(unreachable_pub, dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
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
                let link = tokio::spawn(async move {
                    match TcpStream::connect(&upstream).await {
                        Ok(mut server) => {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                        Err(_) => {
                            counted.unreachable.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
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

    /// Connections refused so far: attempts made during an outage.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections the proxy took but could not carry on to the broker (it was down).
    pub fn unreachable(&self) -> usize {
        self.shared.unreachable.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}
