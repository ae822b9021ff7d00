//! Request/reply through a client: NestJS's `client.send`, typed `request`s, and the reply
//! consumer that hands each reply to the request waiting for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::pending::{Pending, interpret};
use super::{ClientProxy, wait_unblocked};
use crate::codec::{decode_reply, encode_request};
use crate::config::DEFAULT_REQUEST_TIMEOUT;
use crate::contract::Request;
use crate::correlation;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::transport::{Link, OnReply};

impl ClientProxy {
    /// Sends a typed request and waits for its typed reply: [`send`](Self::send) with the
    /// pattern and the reply type of `request`'s type.
    ///
    /// ```no_run
    /// # use rmq_bus::contract::Request;
    /// # #[derive(serde::Deserialize)] struct Order { id: String }
    /// # #[derive(Request, serde::Serialize)] #[request(pattern = "get_order", reply = Order)] struct GetOrder { id: String }
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// let order = client.request(&GetOrder { id: "o-1".into() }).await?; // an Order
    /// # Ok(()) }
    /// ```
    pub async fn request<Q>(&self, request: &Q) -> Result<Q::Reply>
    where
        Q: Request + Serialize,
        Q::Reply: DeserializeOwned,
    {
        self.send(Q::pattern(), request).await
    }

    /// [`request`](Self::request) with its own timeout.
    pub async fn request_timeout<Q>(&self, request: &Q, timeout: Duration) -> Result<Q::Reply>
    where
        Q: Request + Serialize,
        Q::Reply: DeserializeOwned,
    {
        self.send_timeout(Q::pattern(), request, timeout).await
    }

    /// Sends request `pattern` with `data` and waits for the reply, as NestJS's
    /// `client.send(pattern, data)`, within [`DEFAULT_REQUEST_TIMEOUT`].
    ///
    /// The reply comes back through RabbitMQ's direct reply-to. Errors: [`Error::RequestTimeout`],
    /// [`Error::Remote`] (carrying the remote [`RpcError`](crate::RpcError)), [`Error::NoHandler`],
    /// [`Error::ReplyLost`] (the connection closed first), [`Error::BadReply`], and the
    /// publishing errors of [`emit`](Self::emit). Requests are published transient: one nobody
    /// waits for after its timeout need not survive a broker restart.
    ///
    /// ```no_run
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// let total: f64 = client.send("sum", &[1.5, 2.5]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<T, R>(&self, pattern: impl Into<Pattern>, data: &T) -> Result<R>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_timeout(pattern, data, DEFAULT_REQUEST_TIMEOUT)
            .await
    }

    /// [`send`](Self::send) with its own timeout.
    pub async fn send_timeout<T, R>(
        &self,
        pattern: impl Into<Pattern>,
        data: &T,
        timeout: Duration,
    ) -> Result<R>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let pattern = pattern.into();
        let id = correlation::new_id();
        let body = encode_request(&pattern, data, &id)?;
        let deadline = Instant::now() + timeout;
        let timed_out = || Error::RequestTimeout {
            pattern: pattern.key().to_owned(),
            timeout,
        };
        // Connecting is boxed: its future is large, and every pending request would carry it.
        let (link, link_id) = match self.live_link() {
            Some(live) => live,
            None => tokio::time::timeout_at(deadline.into(), Box::pin(self.link(deadline)))
                .await
                .map_err(|_| timed_out())??,
        };
        wait_unblocked(&link, deadline).await?;
        let reply_to = self.reply_to(&link, link_id).await?;
        let (sender, mut receiver) = oneshot::channel();
        let pending = Pending::register(&self.inner.pending, &id, link_id, sender);
        let mut properties = self.properties(Some(&id), false);
        properties.reply_to = Some(reply_to);
        // The reply may come before the confirm; an unroutable or refused request fails at once.
        // Handing it over can stall on a blocked connection: the request's deadline bounds it.
        let expired = tokio::time::sleep_until(deadline.into());
        tokio::pin!(expired);
        let mut confirm = tokio::select! {
            published = self.publish_on(&link, &pattern, &body, &properties) => published?,
            () = &mut expired => return Err(timed_out()),
        };
        let mut confirmed = false;
        let reply = loop {
            tokio::select! {
                reply = &mut receiver => {
                    break reply.map_err(|_| Error::ReplyLost { pattern: pattern.key().to_owned() });
                }
                confirmation = &mut confirm, if !confirmed => {
                    confirmed = true;
                    if let Err(error) = confirmation {
                        break Err(self.name_nack(error, &pattern));
                    }
                }
                () = &mut expired => break Err(timed_out()),
            }
        };
        if !confirmed {
            confirm.detach();
        }
        drop(pending);
        interpret(pattern.key(), reply?)
    }

    /// The reply address of `link`, starting its reply consumer on first use: each reply goes to
    /// the request waiting for its correlation id; when the link dies, so do its requests.
    async fn reply_to(&self, link: &Link, link_id: u64) -> Result<String> {
        let pending = self.inner.pending.clone();
        let on_reply: OnReply = Arc::new(move |id, body| {
            let Some(id) = id else {
                tracing::debug!("reply without correlation id dropped");
                return;
            };
            let waiting = pending.lock().map(|mut map| map.remove(&id)).ok().flatten();
            match (waiting, decode_reply(&body)) {
                (Some((_, sender)), Ok(reply)) => {
                    let _ = sender.send(reply);
                }
                (Some(_), Err(reason)) => {
                    tracing::warn!(correlation_id = %id, %reason, "unreadable reply dropped")
                }
                (None, _) => tracing::debug!(correlation_id = %id, "late or unknown reply dropped"),
            }
        });
        let pending = self.inner.pending.clone();
        let on_end = move || {
            if let Ok(mut map) = pending.lock() {
                map.retain(|_, (link, _)| *link != link_id);
            }
        };
        link.reply_to(on_reply, on_end).await
    }
}
