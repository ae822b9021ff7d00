//! Requests waiting for their reply, and what a reply means.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::codec::{NO_HANDLER, Reply};
use crate::error::{Error, Result};
use crate::rpc::RpcError;

/// Requests waiting for their reply, by correlation id, with the link they were sent on.
pub(super) type PendingMap = Arc<SyncMutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>>;

/// A request's place among the pending ones, removed however the request ends.
pub(super) struct Pending {
    map: PendingMap,
    id: String,
}

impl Pending {
    pub(super) fn register(
        map: &PendingMap,
        id: &str,
        link: u64,
        sender: oneshot::Sender<Reply>,
    ) -> Self {
        if let Ok(mut pending) = map.lock() {
            pending.insert(id.to_owned(), (link, sender));
        }
        Self {
            map: map.clone(),
            id: id.to_owned(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.map.lock() {
            pending.remove(&self.id);
        }
    }
}

/// Turns a NestJS reply into the response or the error it carries.
pub(super) fn interpret<R: DeserializeOwned>(pattern: &str, reply: Reply) -> Result<R> {
    if let Some(error) = reply.err.filter(|e| !e.is_null()) {
        return Err(if error.as_str() == Some(NO_HANDLER) {
            Error::NoHandler {
                pattern: pattern.to_owned(),
            }
        } else {
            Error::Remote {
                pattern: pattern.to_owned(),
                error: RpcError::object(error),
            }
        });
    }
    let raw = reply.response.as_deref().map_or("null", |r| r.get());
    serde_json::from_str(raw).map_err(|e| Error::BadReply {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}
