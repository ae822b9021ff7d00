//! What an AsyncAPI document says of a client: where it sends, and the contracts it declares
//! with [`ClientProxy::sends`].

use std::sync::PoisonError;

use super::ClientProxy;
use crate::contract::Contract;
use crate::contract::asyncapi::{Sends, Sent, sealed::Sealed};

impl ClientProxy {
    /// Declares that this client sends contract `C` (an [`Event`](crate::contract::Event) or a
    /// [`Request`](crate::contract::Request)), so that an AsyncAPI document of it
    /// ([`AsyncApi::client`](crate::contract::AsyncApi::client)) has a `send` operation for it.
    /// It changes nothing else: any contract can be sent either way. Clones share their
    /// declarations.
    ///
    /// ```
    /// # use rmq_bus::contract::Event;
    /// # #[derive(Event, serde::Serialize)] #[event(pattern = "order_created")] struct OrderCreated { price: f64 }
    /// use rmq_bus::{ClientProxy, RmqOptions};
    /// let billing = ClientProxy::new(RmqOptions::new("BILLING")).sends::<OrderCreated>();
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "asyncapi")))]
    pub fn sends<C: Contract>(self) -> Self {
        let described = C::__described();
        let mut sends = self
            .inner
            .sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let known = sends
            .iter()
            .any(|other| other.pattern == described.pattern && other.kind == described.kind);
        if !known {
            sends.push(described);
        }
        drop(sends);
        self
    }
}

impl Sealed for ClientProxy {}

impl Sends for ClientProxy {
    fn __sent(&self) -> Sent {
        let sends = self
            .inner
            .sends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Sent::new(&self.inner.options, sends)
    }
}
