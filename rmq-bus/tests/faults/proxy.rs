//! A TCP proxy between rmq-bus and the broker that can cut every connection on demand, or refuse
//! new ones for a while: the network faults of the fault-injection tests.
#![allow(unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refusing: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (host:port).
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (links_in, refusing_in, upstream) =
            (links.clone(), refusing.clone(), upstream.to_owned());
        let acceptor = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refusing_in.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut links = links_in.lock().expect("lock");
                links.retain(|link| !link.is_finished());
                links.push(link);
            }
        });
        Proxy {
            port,
            links,
            refusing,
            acceptor,
        }
    }

    /// The broker URI through this proxy.
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Cuts every open connection, as a network failure would; returns how many were cut.
    pub fn cut(&self) -> usize {
        let links = std::mem::take(&mut *self.links.lock().expect("lock"));
        let open = links.iter().filter(|link| !link.is_finished()).count();
        for link in links {
            link.abort();
        }
        open
    }

    /// Refuses (or accepts again) new connections: an outage, not just a blip.
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}
