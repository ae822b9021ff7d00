//! One fault test at a time on this machine, across processes: cargo-nextest runs every test in
//! its own process, where a static mutex serialises nothing.
//!
//! The lock is a listening socket on a fixed loopback port: only one socket can listen there, and
//! the OS closes it when the process ends however it ends (a crash, a kill, a timeout), so a lock
//! is never left behind. (`std::fs::File::lock` is newer than the crate's MSRV, 1.88.)
#![allow(unreachable_pub)]

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

/// The port whose listener is the lock: below Linux's ephemeral range (32768–60999), so no
/// outgoing connection takes it for a moment, and next to no well-known service.
pub const LOCK_PORT: u16 = 29_411;

/// How long a test waits for the others before it fails: `cargo test` runs this binary's tests
/// on parallel threads, and they queue here one after another.
const PATIENCE: Duration = Duration::from_secs(300);

/// Held for the whole of a fault test; released on drop (or when the process ends).
#[must_use = "the lock is released when dropped"]
pub struct FaultLock {
    _listener: TcpListener,
}

impl FaultLock {
    /// Waits (bounded) until no other fault test runs, in this process or another.
    pub async fn acquire() -> FaultLock {
        let started = Instant::now();
        loop {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, LOCK_PORT)) {
                Ok(listener) => {
                    return FaultLock {
                        _listener: listener,
                    };
                }
                Err(error) if error.kind() == ErrorKind::AddrInUse => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "waited {PATIENCE:?} for the fault-test lock (a listener on \
                         127.0.0.1:{LOCK_PORT}): another fault test is stuck, or another \
                         program listens there (`ss -ltnp 'sport = {LOCK_PORT}'`)"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => {
                    panic!("cannot take the fault-test lock on 127.0.0.1:{LOCK_PORT}: {error}")
                }
            }
        }
    }
}
