//! Typed contracts: a message type bound to its pattern, so that the service that sends it and
//! the one that handles it agree at compile time, as MassTransit's message types do, in NestJS's
//! terms. The wire does not change: a contract is the same `{"pattern", "data"}` packet.
//!
//! ```
//! use rmq_bus::contract::{Event, Request};
//! use serde::{Deserialize, Serialize};
//!
//! /// An order was placed and waits to be billed.
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(pattern = "order_created")]
//! #[serde(rename_all = "camelCase")]
//! struct OrderCreated { order_id: String, price: f64 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: String, status: String }
//!
//! #[derive(Request, Serialize, Deserialize)]
//! #[request(pattern = "get_order", reply = Order)]
//! struct GetOrder { id: String }
//!
//! #[derive(Request, Serialize, Deserialize)]
//! #[request(pattern(cmd = "sum"), reply = i64)] // NestJS's { cmd: 'sum' }
//! struct Sum(Vec<i64>);
//!
//! assert_eq!(OrderCreated::PATTERN, "order_created");
//! assert_eq!(Sum::PATTERN, r#"{"cmd":"sum"}"#);
//! ```
//!
//! A client sends them with [`ClientProxy::publish`](crate::ClientProxy::publish) and
//! [`ClientProxy::request`](crate::ClientProxy::request), which take the pattern (and the reply
//! type) from the type; a handler takes its pattern from its payload's type:
//!
//! ```no_run
//! # use rmq_bus::contract::Event;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Event, Serialize, Deserialize)] #[event(pattern = "order_created")] struct OrderCreated { price: f64 }
//! use rmq_bus::{RmqContext, event_pattern};
//!
//! #[event_pattern] // the pattern is OrderCreated's
//! async fn bill(#[payload] order: OrderCreated, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
//!     ctx.ack().await
//! }
//! ```
//!
//! A handler that also names a pattern must name its payload type's: a mismatch fails the build.
//!
//! ## AsyncAPI
//!
//! With the `asyncapi` feature (on by default), `AsyncApi` describes a service in an AsyncAPI
//! 3.0 document: the queues and exchanges its [`Microservice`](crate::Microservice) consumes, a
//! `receive` operation for each handler, and the contracts its [`ClientProxy`](crate::ClientProxy)
//! handles declare they send (`ClientProxy::sends`). A contract type
//! that also derives `schemars::JsonSchema` gets its payload schema (`rmq_bus::contract::schemars`
//! is the schemars rmq-bus uses, so you need no dependency of your own); its doc comment becomes
//! the message's description.
//!
//! ```
//! # #[cfg(feature = "asyncapi")] {
//! use rmq_bus::contract::{AsyncApi, Event, schemars};
//! use rmq_bus::{ClientProxy, Microservice, Payload, RmqOptions, event_pattern};
//! use serde::{Deserialize, Serialize};
//!
//! /// An order was placed and waits to be billed.
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(pattern = "order_created")]
//! struct OrderCreated { order_id: String, price: f64 }
//!
//! #[event_pattern]
//! async fn bill(#[payload] order: OrderCreated) {}
//!
//! let billing = Microservice::new(RmqOptions::new("BILLING")).handler::<bill>();
//! let orders = ClientProxy::new(RmqOptions::new("BILLING")).sends::<OrderCreated>();
//! let document = AsyncApi::new("billing", "1.0.0")
//!     .microservice(&billing)
//!     .client(&orders)
//!     .to_json();
//! assert!(document.contains(r##""$ref": "#/components/schemas/OrderCreated""##));
//! # }
//! ```

use serde_json::Value;

use crate::pattern::Pattern;
use crate::schema::Schemas;

#[cfg(feature = "asyncapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "asyncapi")))]
pub mod asyncapi;
#[cfg(feature = "asyncapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "asyncapi")))]
pub use asyncapi::AsyncApi;
/// schemars, the JSON Schema generator rmq-bus uses for payload schemas: bring it into scope
/// (`use rmq_bus::contract::schemars;`) and derive `schemars::JsonSchema` on contract types,
/// with no dependency of your own.
#[cfg(feature = "asyncapi")]
#[cfg_attr(docsrs, doc(cfg(feature = "asyncapi")))]
pub use schemars;

/// Derives [`Event`](trait@Event): `#[event(pattern = "order_created")]`, or
/// `#[event(pattern(cmd = "order_created"))]` for an object pattern. The type's doc comment
/// becomes its [`DESCRIPTION`](trait@Event).
pub use rmq_bus_macros::Event;
/// Derives [`Request`](trait@Request): `#[request(pattern = "get_order", reply = Order)]`, or
/// `pattern(cmd = "get_order")` for an object pattern; `reply = ()` for a request answered with
/// nothing.
pub use rmq_bus_macros::Request;

/// An event type: what [`ClientProxy::publish`](crate::ClientProxy::publish) sends and an
/// `#[event_pattern]` handler taking it as `#[payload]` receives. Derive it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event contract",
    label = "not an event contract",
    note = "derive it: `#[derive(rmq_bus::contract::Event)]` with `#[event(pattern = \"order_created\")]`, or go untyped: name the pattern in the handler's attribute (`#[event_pattern(\"order_created\")]`) or in the call (`client.emit(\"order_created\", &data)`)"
)]
pub trait Event {
    /// The pattern as routed: the string, or an object pattern's JSON with its keys sorted.
    const PATTERN: &'static str;
    /// Whether [`PATTERN`](Self::PATTERN) is an object pattern.
    const OBJECT_PATTERN: bool = false;
    /// The type's doc comment, for generated documentation.
    const DESCRIPTION: &'static str = "";
    /// The type's name, for generated documentation.
    const NAME: &'static str = "";
    /// Its ordering key, a path into its data (`#[event(pattern = "order_updated", ordered_by =
    /// "orderId")]`, the name on the wire): [`ClientProxy::publish`](crate::ClientProxy::publish)
    /// sends it in the [`KEY_HEADER`](crate::ordering::KEY_HEADER) header, and an
    /// `#[event_pattern]` handler taking its pattern from the contract is ordered by it.
    const ORDERED_BY: Option<&'static str> = None;

    /// The pattern, as rmq-bus sends and routes it.
    fn pattern() -> Pattern {
        pattern_of(Self::PATTERN, Self::OBJECT_PATTERN)
    }

    /// The payload's JSON Schema, for generated documentation. Written by the derive.
    #[doc(hidden)]
    fn __payload_schema(schemas: &mut Schemas) -> Option<Value> {
        let _ = schemas;
        None
    }
}

/// A request type, with the type of its reply: what
/// [`ClientProxy::request`](crate::ClientProxy::request) sends and a `#[message_pattern]`
/// handler taking it as `#[payload]` answers. Derive it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a request contract",
    label = "not a request contract",
    note = "derive it: `#[derive(rmq_bus::contract::Request)]` with `#[request(pattern = \"get_order\", reply = Order)]`, or go untyped: name the pattern in the handler's attribute (`#[message_pattern(\"get_order\")]`) or in the call (`client.send(\"get_order\", &data)`)"
)]
pub trait Request {
    /// The pattern as routed: the string, or an object pattern's JSON with its keys sorted.
    const PATTERN: &'static str;
    /// Whether [`PATTERN`](Self::PATTERN) is an object pattern.
    const OBJECT_PATTERN: bool = false;
    /// The type's doc comment, for generated documentation.
    const DESCRIPTION: &'static str = "";
    /// The type's name, for generated documentation.
    const NAME: &'static str = "";
    /// What the handler answers.
    type Reply;

    /// The pattern, as rmq-bus sends and routes it.
    fn pattern() -> Pattern {
        pattern_of(Self::PATTERN, Self::OBJECT_PATTERN)
    }

    /// The payload's JSON Schema, for generated documentation. Written by the derive.
    #[doc(hidden)]
    fn __payload_schema(schemas: &mut Schemas) -> Option<Value> {
        let _ = schemas;
        None
    }

    /// The reply's JSON Schema, for generated documentation. Written by the derive.
    #[doc(hidden)]
    fn __reply_schema(schemas: &mut Schemas) -> Option<Value> {
        let _ = schemas;
        None
    }
}

/// An event or a request contract, as a client declares it sends with `ClientProxy::sends`
/// (feature `asyncapi`). Implemented by `#[derive(Event)]` and
/// `#[derive(Request)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a contract",
    label = "not an event or request contract",
    note = "derive it: `#[derive(rmq_bus::contract::Event)]` or `#[derive(rmq_bus::contract::Request)]`"
)]
pub trait Contract {
    /// What a document says of it. Written by the derive.
    #[doc(hidden)]
    fn __described() -> check::Described;
}

/// The pattern of a contract: borrowed for a string, parsed for an object.
fn pattern_of(key: &'static str, object: bool) -> Pattern {
    if object {
        serde_json::from_str::<serde_json::Value>(key)
            .map(Pattern::from)
            .unwrap_or_else(|_| Pattern::from_static(key))
    } else {
        Pattern::from_static(key)
    }
}

/// What the macros' generated code uses to check a handler against its payload's contract.
/// Not public API.
#[doc(hidden)]
pub mod check {
    use std::marker::PhantomData;

    use super::{Event, Request};
    use crate::handler::{HandlerResult, IntoReply, RouteKind};
    use crate::pattern::Pattern;
    use crate::rpc::RpcError;
    use crate::schema::MessageDoc;

    /// A pattern as a type: a 128-bit hash of its normalised key, which the macros compute. The
    /// derives give each contract its own (through [`PatternKeyOf`]); a handler naming a pattern
    /// checks it against its payload's, while the program is type-checked.
    pub struct PatternKey<const HASH: u128>;

    /// The pattern of a derived contract, as a type.
    pub trait PatternKeyOf {
        /// Its [`PatternKey`].
        type Key;
    }

    /// Checks `T`, a handler's payload type, against the pattern key `K` its attribute names:
    /// `same_pattern((&&Probe::<T, K>::new()).check())`. For a derived contract, [`ByContract`]
    /// applies and yields its own key beside `K`, which must be the same type; for any other
    /// type, [`ByAnything`] yields `K` twice.
    pub struct Probe<T, K>(PhantomData<(T, K)>);

    impl<T, K> Probe<T, K> {
        /// A probe.
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, K> Default for Probe<T, K> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// Two pattern keys to compare.
    pub struct Compare<A, B>(PhantomData<(A, B)>);

    /// The check for a derived contract: its key against the one named.
    pub trait ByContract {
        /// The contract's key.
        type Key;
        /// The keys to compare.
        fn check(&self) -> Compare<Self::Key, Self::Named>;
        /// The key named by the attribute.
        type Named;
    }

    impl<T: PatternKeyOf, K> ByContract for &Probe<T, K> {
        type Key = T::Key;
        type Named = K;
        fn check(&self) -> Compare<T::Key, K> {
            Compare(PhantomData)
        }
    }

    /// No check: the payload type is not a derived contract.
    pub trait ByAnything {
        /// The key named, twice.
        fn check(&self) -> Compare<Self::Named, Self::Named>;
        /// The key named by the attribute.
        type Named;
    }

    impl<T, K> ByAnything for Probe<T, K> {
        type Named = K;
        fn check(&self) -> Compare<K, K> {
            Compare(PhantomData)
        }
    }

    /// Two patterns that must be the same.
    #[diagnostic::on_unimplemented(
        message = "the pattern named in the handler's attribute differs from the pattern of its payload's contract",
        label = "this pattern is not the contract's",
        note = "remove the pattern from the attribute (`#[event_pattern]` or `#[message_pattern]` alone takes the contract's), or fix it"
    )]
    pub trait SamePattern<B> {}

    impl<A> SamePattern<A> for A {}

    /// Compiles only if the two keys are the same.
    pub fn same_pattern<A: SamePattern<B>, B>(_: Compare<A, B>) {}

    /// What a request handler for contract `Q` may return: `Result<Q::Reply, E>`.
    #[diagnostic::on_unimplemented(
        message = "a request handler for `{Q}` must return `Result<R, E>` where `R` is `{Q}`'s reply type",
        label = "not the reply type of the request contract",
        note = "the reply type is the one named in `#[request(reply = ...)]`; `E` is anything `Into<RpcError>` (RpcError, String, rmq_bus::Error)"
    )]
    pub trait ReplyOf<Q> {
        /// Interprets the value.
        fn into_typed_reply(self) -> HandlerResult;
    }

    impl<Q, E> ReplyOf<Q> for Result<Q::Reply, E>
    where
        Q: Request,
        Q::Reply: serde::Serialize,
        E: Into<RpcError>,
    {
        fn into_typed_reply(self) -> HandlerResult {
            self.into_reply()
        }
    }

    /// Interprets what a handler of request contract `Q` returned, checking at compile time that
    /// it is `Q`'s reply.
    pub fn typed_reply<Q, O: ReplyOf<Q>>(output: O) -> HandlerResult {
        output.into_typed_reply()
    }

    /// What a document says of a contract: its kind, its pattern and its messages.
    #[derive(Clone, Debug)]
    #[cfg_attr(not(feature = "asyncapi"), allow(dead_code))]
    pub struct Described {
        pub(crate) kind: RouteKind,
        pub(crate) pattern: Pattern,
        pub(crate) message: MessageDoc,
    }

    /// The messages of event contract `E`.
    pub fn event_doc<E: Event>() -> MessageDoc {
        MessageDoc::contract(E::NAME, E::DESCRIPTION, E::__payload_schema, None)
    }

    /// The messages of request contract `Q`, with its reply's schema.
    pub fn request_doc<Q: Request>() -> MessageDoc {
        MessageDoc::contract(
            Q::NAME,
            Q::DESCRIPTION,
            Q::__payload_schema,
            Some(Q::__reply_schema),
        )
    }

    /// Event contract `E`, described.
    pub fn describe_event<E: Event>() -> Described {
        Described {
            kind: RouteKind::Event,
            pattern: E::pattern(),
            message: event_doc::<E>(),
        }
    }

    /// Request contract `Q`, described.
    pub fn describe_request<Q: Request>() -> Described {
        Described {
            kind: RouteKind::Message,
            pattern: Q::pattern(),
            message: request_doc::<Q>(),
        }
    }

    /// Picks what a handler's document says of its payload type `T`:
    /// `(&&DocProbe::<T>::new()).doc(fallback)` picks [`EventDoc`] or [`RequestDoc`] (whichever
    /// is in scope) for a contract, and [`PlainDoc`], which keeps `fallback`, for any other type.
    pub struct DocProbe<T>(PhantomData<T>);

    impl<T> DocProbe<T> {
        /// A probe.
        pub fn new() -> Self {
            Self(PhantomData)
        }
    }

    impl<T> Default for DocProbe<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// The document of an event contract.
    pub trait EventDoc {
        /// The contract's messages.
        fn doc(&self, fallback: MessageDoc) -> MessageDoc;
    }

    impl<T: Event> EventDoc for &DocProbe<T> {
        fn doc(&self, _: MessageDoc) -> MessageDoc {
            event_doc::<T>()
        }
    }

    /// The document of a request contract.
    pub trait RequestDoc {
        /// The contract's messages.
        fn doc(&self, fallback: MessageDoc) -> MessageDoc;
    }

    impl<T: Request> RequestDoc for &DocProbe<T> {
        fn doc(&self, _: MessageDoc) -> MessageDoc {
            request_doc::<T>()
        }
    }

    /// The document of any other type: what the handler's macro knows.
    pub trait PlainDoc {
        /// `fallback`.
        fn doc(&self, fallback: MessageDoc) -> MessageDoc;
    }

    impl<T> PlainDoc for DocProbe<T> {
        fn doc(&self, fallback: MessageDoc) -> MessageDoc {
            fallback
        }
    }
}
