//! What a generated AsyncAPI document says of a handler: recorded in its route when it is
//! registered, read only when a document is made.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Attribute, LitStr};

use super::{Arg, Handler};
use crate::args::ArgSource;
use crate::contract::doc_comment;
use crate::pattern::RouteKind;

impl Handler {
    /// Records the doc comment among `attrs`, for generated documentation.
    pub(crate) fn documented(mut self, attrs: &[Attribute]) -> Self {
        self.description = doc_comment(attrs);
        self
    }

    /// What a generated document says of the route: its messages (see
    /// [`message_doc`](Self::message_doc)) and the handler's doc comment.
    pub(super) fn route_doc(&self) -> TokenStream {
        let message = self.message_doc();
        let description = LitStr::new(&self.description, Span::call_site());
        quote!(::rmq_bus::__private::RouteDoc::new(#message, #description))
    }

    /// What a generated document says of the messages: for a `#[payload]` of a contract type,
    /// the contract's name, doc comment and schemas; for another type, its schema if it has one;
    /// for `#[payload("key")]` arguments, an object of their schemas; else nothing. Autoref
    /// probes pick at compile time, since the macro cannot know the types' traits.
    fn message_doc(&self) -> TokenStream {
        let payload = self
            .args
            .iter()
            .find(|arg| matches!(arg.source, ArgSource::Payload));
        if let Some(Arg { ty, .. }) = payload {
            let by_contract = match self.route_kind {
                RouteKind::Event => quote!(EventDoc),
                RouteKind::Message => quote!(RequestDoc),
            };
            return quote! {{
                #[allow(unused_imports)]
                use ::rmq_bus::__private::{BySchema as _, NoSchema as _, PlainDoc as _, #by_contract as _};
                (&&::rmq_bus::__private::DocProbe::<#ty>::new()).doc(
                    ::rmq_bus::__private::MessageDoc::plain(|schemas| {
                        (&&::rmq_bus::__private::SchemaProbe::<#ty>::new()).schema(schemas)
                    }),
                )
            }};
        }
        let fields: Vec<TokenStream> = self
            .args
            .iter()
            .filter_map(|arg| match &arg.source {
                ArgSource::PayloadField(key) => {
                    let ty = &arg.ty;
                    Some(quote! {
                        (#key, (&&::rmq_bus::__private::SchemaProbe::<#ty>::new()).schema(schemas))
                    })
                }
                _ => None,
            })
            .collect();
        if fields.is_empty() {
            return quote!(::rmq_bus::__private::MessageDoc::unknown());
        }
        quote! {{
            #[allow(unused_imports)]
            use ::rmq_bus::__private::{BySchema as _, NoSchema as _};
            ::rmq_bus::__private::MessageDoc::plain(|schemas| {
                ::rmq_bus::__private::object_schema(&[#(#fields),*])
            })
        }}
    }
}
