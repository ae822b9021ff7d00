//! One connection attempt to one broker URI, bounded: TCP, TLS and the AMQP handshake must be
//! done within the handshake timeout, or the attempt is abandoned and its socket shut, so that a
//! node that accepts TCP but never answers (a frozen VM, a proxy in front of a dead node) costs
//! seconds, not minutes, before the next URI is tried.
//!
//! lapin runs each connection on a thread of its own, blocked on the socket: dropping a pending
//! `connect` future would leave that thread (and its socket) behind for as long as the silent
//! peer keeps the TCP connection open. So the attempt keeps a duplicate of the socket's handle,
//! and shuts the socket down when it gives up: the thread reads the end and exits.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream, OwnedTLSConfig, TLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

/// Why one attempt failed.
#[derive(Debug)]
pub(super) enum AttemptError {
    /// lapin's error: refused, login refused, TLS verification failed, …
    Lapin(lapin::Error),
    /// No complete handshake within the bound.
    TimedOut(Duration),
}

/// The socket of an attempt, as the attempt's owner sees it: shut down on giving up.
#[derive(Default)]
struct Abandon {
    socket: Mutex<Option<TcpStream>>,
    abandoned: AtomicBool,
}

impl Abandon {
    /// Keeps a handle on the socket the attempt just opened; fails if it was given up already.
    fn keep(&self, socket: TcpStream) -> io::Result<()> {
        let mut kept = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        if self.abandoned.load(Ordering::SeqCst) {
            let _ = socket.shutdown(Shutdown::Both);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection attempt abandoned",
            ));
        }
        *kept = Some(socket);
        Ok(())
    }

    /// Gives the attempt up: shuts its socket down, or makes it fail as soon as it has one.
    fn give_up(&self) {
        let mut kept = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        self.abandoned.store(true, Ordering::SeqCst);
        if let Some(socket) = kept.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Lets go of the handle once the attempt succeeded: the connection owns its socket alone,
    /// and closing it closes it.
    fn release(&self) {
        drop(
            self.socket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// Connects to `uri`, TLS included for `amqps://` (trusting `tls`'s extra CA certificates too),
/// within `timeout`.
pub(super) async fn attempt(
    uri: AMQPUri,
    properties: ConnectionProperties,
    tls: OwnedTLSConfig,
    timeout: Duration,
) -> Result<Connection, AttemptError> {
    let runtime = lapin::runtime::default_runtime().map_err(AttemptError::Lapin)?;
    let abandon = Arc::new(Abandon::default());
    let kept = abandon.clone();
    let connect = Connection::connector(
        uri,
        runtime,
        async move |uri: AMQPUri, runtime| {
            // TCP first, to keep a handle on the socket before TLS, which can stall too.
            let tls_host = (uri.scheme == AMQPScheme::AMQPS).then(|| uri.authority.host.clone());
            let mut plain = uri;
            plain.scheme = AMQPScheme::AMQP;
            let stream = plain
                .connect_with_config_async(TLSConfig::default(), &runtime)
                .await?;
            if let AsyncTcpStream::Plain(socket) = &stream {
                kept.keep(duplicate(socket.get_ref())?)?;
            }
            Ok(match tls_host {
                Some(host) => stream.into_tls(&host, tls.as_ref()).await?,
                None => stream,
            })
        },
        properties,
    );
    let result = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(AttemptError::Lapin(error)),
        Err(_) => {
            abandon.give_up();
            return Err(AttemptError::TimedOut(timeout));
        }
    };
    abandon.release();
    result
}

/// A second handle on a connected socket, to shut it down from outside lapin's thread.
#[cfg(unix)]
fn duplicate(socket: &tokio::net::TcpStream) -> io::Result<TcpStream> {
    use std::os::fd::AsFd;
    Ok(TcpStream::from(socket.as_fd().try_clone_to_owned()?))
}

/// A second handle on a connected socket, to shut it down from outside lapin's thread.
#[cfg(windows)]
fn duplicate(socket: &tokio::net::TcpStream) -> io::Result<TcpStream> {
    use std::os::windows::io::AsSocket;
    Ok(TcpStream::from(socket.as_socket().try_clone_to_owned()?))
}
