//! What a generated document knows of a handler's messages: the contract type's name and doc
//! comment, the handler's doc comment, and functions writing the payload's (and a request's
//! reply's) JSON Schema. Recorded once when a handler is registered, never per message, and read
//! only when an AsyncAPI document is made ([`contract::AsyncApi`](crate::contract::AsyncApi)).
//!
//! The schemas come from schemars (feature `asyncapi`) through an autoref probe, so that the
//! macros' code compiles whatever the features and whatever the type:
//! `(&&SchemaProbe::<T>::new()).schema(schemas)` picks [`BySchema`] when `T: JsonSchema` (and the
//! feature is on), and [`NoSchema`], which knows nothing, otherwise.

use std::marker::PhantomData;

use serde_json::{Map, Value};

/// Where payload schemas are made: a schemars generator that keeps the definitions of the types
/// the schemas refer to, for the document's `components.schemas`. Without the `asyncapi`
/// feature, a placeholder that makes none.
#[derive(Debug)]
pub struct Schemas {
    #[cfg(feature = "asyncapi")]
    pub(crate) generator: schemars::SchemaGenerator,
}

/// Writes a type's schema (a `$ref` into `#/components/schemas/` for named types), or `None` when
/// the type has none.
pub type SchemaFn = fn(&mut Schemas) -> Option<Value>;

/// A schema function for a type with none.
fn no_schema(_: &mut Schemas) -> Option<Value> {
    None
}

/// What is known of the messages of one handler or contract.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "asyncapi"), allow(dead_code))]
pub struct MessageDoc {
    /// The contract type's name (`OrderCreated`); empty when the payload is not a contract.
    pub(crate) name: &'static str,
    /// The contract type's doc comment.
    pub(crate) description: &'static str,
    /// The schema of the packet's `data`.
    pub(crate) payload: SchemaFn,
    /// The schema of a request's reply (`None`: not known).
    pub(crate) reply: Option<SchemaFn>,
}

impl MessageDoc {
    /// A contract's messages.
    pub const fn contract(
        name: &'static str,
        description: &'static str,
        payload: SchemaFn,
        reply: Option<SchemaFn>,
    ) -> Self {
        Self {
            name,
            description,
            payload,
            reply,
        }
    }

    /// The messages of a handler whose payload is not a contract: only their data's schema.
    pub const fn plain(payload: SchemaFn) -> Self {
        Self::contract("", "", payload, None)
    }

    /// Messages nothing is known of.
    pub const fn unknown() -> Self {
        Self::plain(no_schema)
    }
}

/// What a generated handler records for the document: its messages and its doc comment.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "asyncapi"), allow(dead_code))]
pub struct RouteDoc {
    pub(crate) message: MessageDoc,
    /// The handler function's doc comment.
    pub(crate) description: &'static str,
}

impl RouteDoc {
    /// A handler's record.
    pub const fn new(message: MessageDoc, description: &'static str) -> Self {
        Self {
            message,
            description,
        }
    }
}

/// Picks the schema of `T`: `(&&SchemaProbe::<T>::new()).schema(schemas)`, with [`BySchema`] and
/// [`NoSchema`] in scope.
pub struct SchemaProbe<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> SchemaProbe<T> {
    /// A probe.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T: ?Sized> Default for SchemaProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The schema of a type that implements `schemars::JsonSchema` (feature `asyncapi`).
pub trait BySchema {
    /// Writes the schema.
    fn schema(&self, schemas: &mut Schemas) -> Option<Value>;
}

#[cfg(feature = "asyncapi")]
impl<T: schemars::JsonSchema + ?Sized> BySchema for &SchemaProbe<T> {
    fn schema(&self, schemas: &mut Schemas) -> Option<Value> {
        Some(schemas.subschema_for::<T>())
    }
}

/// No schema: the type does not implement `schemars::JsonSchema` (or the feature is off).
pub trait NoSchema {
    /// Nothing to write.
    fn schema(&self, schemas: &mut Schemas) -> Option<Value>;
}

impl<T: ?Sized> NoSchema for SchemaProbe<T> {
    fn schema(&self, _: &mut Schemas) -> Option<Value> {
        None
    }
}

/// The schema of data read key by key (`#[payload("key")]` arguments): an object with those
/// keys, each with its type's schema (or any value). None is required: a missing key reads as
/// `null`, which an `Option` accepts.
pub fn object_schema(fields: &[(&str, Option<Value>)]) -> Option<Value> {
    let properties: Map<String, Value> = fields
        .iter()
        .map(|(key, schema)| {
            let schema = schema.clone().unwrap_or_else(|| Value::Object(Map::new()));
            ((*key).to_owned(), schema)
        })
        .collect();
    let mut object = Map::new();
    object.insert("type".to_owned(), Value::from("object"));
    object.insert("properties".to_owned(), Value::Object(properties));
    Some(Value::Object(object))
}

#[cfg(feature = "asyncapi")]
impl Schemas {
    /// A generator of JSON Schema draft 7 (AsyncAPI's default schema format is a superset of
    /// it), with definitions under `#/components/schemas`, as the document holds them; schemas
    /// describe what a consumer accepts (serde's deserialization).
    pub(crate) fn new() -> Self {
        let settings = schemars::generate::SchemaSettings::draft07().with(|settings| {
            settings.definitions_path = "#/components/schemas".into();
            settings.meta_schema = None;
        });
        Self {
            generator: settings.into_generator(),
        }
    }

    /// `T`'s schema, or a `$ref` to its definition, with the generator's draft-7 transforms
    /// applied (schemars applies them to root schemas only).
    fn subschema_for<T: schemars::JsonSchema + ?Sized>(&mut self) -> Value {
        let mut schema = self.generator.subschema_for::<T>();
        for transform in self.generator.transforms_mut() {
            transform.transform(&mut schema);
        }
        schema.to_value()
    }

    /// The definitions made so far, for `components.schemas`.
    pub(crate) fn take_definitions(&mut self) -> Map<String, Value> {
        self.generator.take_definitions(true)
    }
}
