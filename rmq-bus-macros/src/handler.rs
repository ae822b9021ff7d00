//! A handler function: checking its signature, extracting its arguments, and the route that calls
//! it. Also `#[event_pattern]` and `#[message_pattern]` on a free `async fn`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, Item, LitStr, Path, ReturnType, Signature, Type};

mod doc;

use crate::args::{ArgSource, take_arg_source};
use crate::errors::Errors;
use crate::pattern::{Pattern, RouteKind};

/// Where a handler is declared, which decides the receiver it must take.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A free function: no receiver.
    Free,
    /// A method of a `#[controller]` impl block: `&self`.
    Method,
}

/// A handler argument: its type and where its value comes from.
pub(crate) struct Arg {
    ty: Type,
    source: ArgSource,
}

/// Where a handler's pattern comes from.
pub(crate) enum Routing {
    /// Its attribute names it; if its payload type is a contract, the two must agree.
    Named(Pattern),
    /// Its payload type, a contract, names it.
    FromPayload(Type),
}

/// A handler whose signature passed the checks.
pub(crate) struct Handler {
    /// The function's name.
    pub(crate) ident: Ident,
    /// Whether it handles events or requests.
    route_kind: RouteKind,
    /// The pattern routed to it.
    routing: Routing,
    args: Vec<Arg>,
    /// Where a wrong return type is reported.
    output_span: Span,
    /// Its doc comment, for generated documentation.
    description: String,
    /// `ordered_by = "path"` from its attribute.
    ordered_by: Option<LitStr>,
}

/// Checks a handler's signature, recording every problem in `errors`, and removes the
/// argument attributes (even wrong ones, so that rustc does not report them again).
/// `pattern` is what its attribute names: `None` if that was wrong (already reported),
/// `Some(None)` if it names none. Returns `None` if the signature cannot be a handler.
pub(crate) fn analyze(
    sig: &mut Signature,
    route_kind: RouteKind,
    pattern: Option<Option<Pattern>>,
    kind: Kind,
    errors: &mut Errors,
) -> Option<Handler> {
    let handler = route_kind.handler();
    // This signature's own errors, to tell whether it can be a handler.
    let mut own = Errors::default();
    if let Some(unsafety) = &sig.unsafety {
        own.push(syn::Error::new_spanned(
            unsafety,
            format!("{handler}s cannot be `unsafe fn`; remove `unsafe`"),
        ));
    }
    if sig.asyncness.is_none() {
        own.push(syn::Error::new_spanned(
            sig.fn_token,
            format!("{handler}s must be `async fn`; add `async`"),
        ));
    }
    if !sig.generics.params.is_empty() {
        own.push(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "{handler}s cannot have generic parameters: each argument is extracted by its \
                 concrete type; remove the generics"
            ),
        ));
    }
    if let Some(error) = check_receiver(sig, route_kind, kind) {
        own.push(error);
    }

    let mut args = Vec::new();
    for input in &mut sig.inputs {
        let FnArg::Typed(arg) = input else { continue };
        let source = take_arg_source(&mut arg.attrs, &mut own);
        if let Type::ImplTrait(impl_trait) = &*arg.ty {
            own.push(syn::Error::new_spanned(
                impl_trait,
                format!("{handler} arguments need a concrete type, not `impl Trait`"),
            ));
        }
        if let (ArgSource::Context, Type::Reference(reference)) = (&source, &*arg.ty) {
            own.push(syn::Error::new_spanned(
                reference.and_token,
                "take `RmqContext` by value, not by reference: `#[ctx] ctx: RmqContext` (clones \
                 are cheap, and share the delivery)",
            ));
        }
        args.push(Arg {
            ty: (*arg.ty).clone(),
            source,
        });
    }

    let routing = match pattern {
        None => None,
        Some(Some(pattern)) => Some(Routing::Named(pattern)),
        Some(None) => {
            let payload = args
                .iter()
                .find(|arg| matches!(arg.source, ArgSource::Payload));
            match payload {
                Some(arg) => Some(Routing::FromPayload(arg.ty.clone())),
                None => {
                    let span = match kind {
                        Kind::Free => Span::call_site(),
                        Kind::Method => sig.ident.span(),
                    };
                    own.push(syn::Error::new(
                        span,
                        route_kind.missing_pattern_or_contract(),
                    ));
                    None
                }
            }
        }
    };
    let output_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let valid = own.is_empty();
    errors.append(own);
    Some(Handler {
        ident: sig.ident.clone(),
        route_kind,
        routing: routing.filter(|_| valid)?,
        args,
        output_span,
        description: String::new(),
        ordered_by: None,
    })
}

/// The receiver error for a handler of `kind`, if its receiver is wrong.
fn check_receiver(sig: &Signature, route_kind: RouteKind, kind: Kind) -> Option<syn::Error> {
    let receiver = sig.receiver();
    let attribute = route_kind.attribute();
    match (kind, receiver) {
        (Kind::Free, None) => None,
        (Kind::Free, Some(_)) => Some(syn::Error::new(
            Span::call_site(),
            format!("`#[{attribute}]` on a method needs `#[controller]` on its impl block"),
        )),
        (Kind::Method, None) => Some(syn::Error::new_spanned(
            &sig.ident,
            format!(
                "a handler method of a `#[controller]` takes `&self`; add `&self`, or move the \
                 function out of the impl block as a free `#[{attribute}]` fn"
            ),
        )),
        (Kind::Method, Some(receiver)) => {
            const SHARED: &str = "a controller is shared through an `Arc` by handlers running \
                                  concurrently";
            let message = match &*receiver.ty {
                Type::Reference(reference) if reference.mutability.is_some() => format!(
                    "handler methods cannot take `&mut self`: {SHARED}; take `&self` and keep \
                     mutable state behind a `Mutex` or an atomic"
                ),
                Type::Reference(reference) if is_self(&reference.elem) => return None,
                _ if receiver.reference.is_none() && receiver.colon_token.is_none() => {
                    format!("handler methods cannot take `self` by value: {SHARED}; take `&self`")
                }
                _ => format!("handler methods take `&self`: {SHARED}; take `&self`"),
            };
            Some(syn::Error::new_spanned(receiver, message))
        }
    }
}

/// Whether `ty` is `Self`.
fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("Self"))
}

impl Handler {
    /// Orders it by the key its attribute names.
    pub(crate) fn ordered_by(mut self, path: Option<LitStr>) -> Self {
        self.ordered_by = path;
        self
    }

    /// Its route, `route`, ordered by the key its attribute names, or else by its payload
    /// contract's (an event contract naming none leaves it unordered).
    fn ordered(&self, route: TokenStream) -> TokenStream {
        let key = match (&self.ordered_by, &self.routing, self.route_kind) {
            (Some(_), _, _) => crate::ordering::option_tokens(self.ordered_by.as_ref()),
            (None, Routing::FromPayload(ty), RouteKind::Event) => {
                quote_spanned!(ty.span()=> <#ty as ::rmq_bus::contract::Event>::ORDERED_BY)
            }
            _ => return route,
        };
        quote!(::rmq_bus::__private::ordered(#route, #key))
    }

    /// The pattern its attribute names, if it names one.
    pub(crate) fn named_pattern(&self) -> Option<&Pattern> {
        match &self.routing {
            Routing::Named(pattern) => Some(pattern),
            Routing::FromPayload(_) => None,
        }
    }

    /// The pattern, as an expression: the one named, or the payload contract's (an error at the
    /// type if it is not a contract).
    fn pattern(&self) -> TokenStream {
        match &self.routing {
            Routing::Named(pattern) => quote!(#pattern),
            Routing::FromPayload(ty) => {
                let contract = self.route_kind.contract_trait();
                quote_spanned!(ty.span()=> <#ty as #contract>::pattern())
            }
        }
    }

    /// When the attribute names a pattern and the payload's type is a contract, a check that
    /// they agree, which fails the build otherwise (and does nothing for other types).
    fn contract_check(&self) -> TokenStream {
        let Routing::Named(pattern) = &self.routing else {
            return TokenStream::new();
        };
        let Some(payload) = self
            .args
            .iter()
            .find(|arg| matches!(arg.source, ArgSource::Payload))
        else {
            return TokenStream::new();
        };
        let ty = &payload.ty;
        let key = pattern.key_type();
        let span = key
            .clone()
            .into_iter()
            .next()
            .map_or_else(Span::call_site, |token| token.span());
        quote_spanned! {span=>
            #[allow(unused_imports)]
            use ::rmq_bus::__private::{ByAnything as _, ByContract as _};
            ::rmq_bus::__private::same_pattern(
                (&&::rmq_bus::__private::Probe::<#ty, #key>::new()).check(),
            );
        }
    }

    /// The route of a free function:
    /// `event_route(pattern, |message| async move { ... })`, or `message_route`.
    pub(crate) fn free_route(&self) -> TokenStream {
        let pattern = self.pattern();
        let check = self.contract_check();
        let route = self.route_kind.route_constructor();
        let doc = self.route_doc();
        let ident = self.spanned_ident();
        let future = self.future(quote!(#ident), None);
        let route = self.ordered(quote! {
            #route(
                #pattern,
                #doc,
                |__rmq_message: ::rmq_bus::__private::Message| #future,
            )
        });
        quote! {
            {
                #check
                #route
            }
        }
    }

    /// The route of a controller method, calling it on a clone of `self: Arc<Self>`.
    pub(crate) fn method_route(&self) -> TokenStream {
        let pattern = self.pattern();
        let check = self.contract_check();
        let route = self.route_kind.route_constructor();
        let doc = self.route_doc();
        let ident = self.spanned_ident();
        let future = self.future(
            quote_spanned!(self.output_span=> Self::#ident),
            Some(quote!(&*__rmq_this)),
        );
        let route = self.ordered(quote! {
            #route(
                #pattern,
                #doc,
                move |__rmq_message: ::rmq_bus::__private::Message| {
                    let __rmq_this = ::core::clone::Clone::clone(&__rmq_this);
                    #future
                },
            )
        });
        quote! {
            {
                #check
                let __rmq_this = ::core::clone::Clone::clone(&self);
                #route
            }
        }
    }

    /// The function's name, spanned at its return type like the rest of the call.
    fn spanned_ident(&self) -> Ident {
        let mut ident = self.ident.clone();
        ident.set_span(self.output_span);
        ident
    }

    /// The future handling one message: extracts the arguments, checks and drops the message (so
    /// that a body no argument read is known to be a packet, and that no clone of its context
    /// outlives the handler), then calls and interprets the result.
    fn future(&self, callee: TokenStream, receiver: Option<TokenStream>) -> TokenStream {
        let bindings: Vec<Ident> = (0..self.args.len())
            .map(|i| format_ident!("__rmq_arg{}", i))
            .collect();
        let extractions = self.args.iter().zip(&bindings).map(|(arg, binding)| {
            let ty = &arg.ty;
            // Spanned at the type, so that a type that does not fit is reported there.
            let value = match &arg.source {
                ArgSource::Payload => quote_spanned! {ty.span()=>
                    ::rmq_bus::__private::payload::<#ty>(&__rmq_message)?
                },
                ArgSource::PayloadField(key) => quote_spanned! {ty.span()=>
                    ::rmq_bus::__private::payload_field::<#ty>(&__rmq_message, #key)?
                },
                ArgSource::Context => quote_spanned! {ty.span()=>
                    ::rmq_bus::__private::context(&__rmq_message)
                },
                ArgSource::Extract => quote_spanned! {ty.span()=>
                    ::rmq_bus::__private::extract::<#ty>(&__rmq_message)?
                },
            };
            quote!(let #binding: #ty = #value;)
        });
        let receiver = receiver.map(|receiver| quote!(#receiver,));
        // Spanned at the return type, so that a return type that does not fit is reported there
        // (`IntoHandlerResult` for events, `IntoReply` for requests, the contract's reply for a
        // request whose payload names its pattern).
        let interpret = match (&self.routing, self.route_kind) {
            (Routing::FromPayload(ty), RouteKind::Message) => {
                quote_spanned!(self.output_span=> ::rmq_bus::__private::typed_reply::<#ty, _>)
            }
            _ => self.route_kind.interpret_output(),
        };
        let call = quote_spanned! {self.output_span=>
            #interpret(#callee(#receiver #(#bindings),*).await)
        };
        quote! {
            async move {
                #(#extractions)*
                ::rmq_bus::__private::finish(__rmq_message)?;
                #call
            }
        }
    }
}

/// The `#[cfg]` attributes of an item, repeated on what is generated for it.
pub(crate) fn cfg_attributes(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|attr| attr.path().is_ident("cfg"))
}

/// The argument of the items the macros emit for each `#[event_pattern]` or `#[message_pattern]`
/// they remove, so that the user's `use` of the macro is not reported unused. Such an item expands
/// to nothing.
const USE_MARKER: &str = "__rmq_bus_used";

/// An item using the attribute macro named by `path`: `#[path(__rmq_bus_used)] const _: () = ();`.
pub(crate) fn use_marker(path: &Path) -> TokenStream {
    let marker = Ident::new(USE_MARKER, Span::call_site());
    quote! {
        #[#path(#marker)]
        const _: () = ();
    }
}

/// Whether `args` are those of an item made by [`use_marker`].
fn is_use_marker(args: &TokenStream) -> bool {
    syn::parse2::<Ident>(args.clone()).is_ok_and(|ident| ident == USE_MARKER)
}

/// The error for `extra`, a second pattern attribute (of kind `extra_kind`) on a handler already
/// marked with one of kind `first`.
pub(crate) fn extra_pattern_error(
    first: RouteKind,
    extra_kind: RouteKind,
    extra: &Attribute,
    kind: Kind,
) -> syn::Error {
    let another = match kind {
        Kind::Free => "function",
        Kind::Method => "method",
    };
    let message = if first == extra_kind {
        format!(
            "a handler has one `#[{}]`; remove this one (write another {another} for another \
             pattern)",
            first.attribute()
        )
    } else {
        format!(
            "a handler is either an event handler (`#[event_pattern]`) or a request handler \
             (`#[message_pattern]`), not both; remove this `#[{}]` (write another {another} for \
             it)",
            extra_kind.attribute()
        )
    };
    syn::Error::new_spanned(extra, message)
}

/// `#[event_pattern("p")]` or `#[message_pattern("p")]` (`route_kind`) on a free `async fn`: the
/// function, plus a type of its name implementing `HandlerFn`.
pub(crate) fn expand_free(
    route_kind: RouteKind,
    args: TokenStream,
    item: TokenStream,
) -> TokenStream {
    if is_use_marker(&args) {
        return TokenStream::new();
    }
    let mut errors = Errors::default();
    let (pattern, ordered_by) = split_args(route_kind, args, &mut errors);
    let mut func = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        Ok(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                format!(
                    "`#[{}]` goes on an `async fn`, or on a method of a `#[controller]` impl \
                     block",
                    route_kind.attribute()
                ),
            ));
            let errors = errors.into_compile_error();
            return quote!(#item #errors);
        }
        Err(error) => {
            errors.push(error);
            let errors = errors.into_compile_error();
            return quote!(#item #errors);
        }
    };

    let is_method = func.sig.receiver().is_some();
    let handler = analyze(&mut func.sig, route_kind, pattern, Kind::Free, &mut errors)
        .map(|handler| handler.documented(&func.attrs).ordered_by(ordered_by));
    if is_method {
        // Inside an impl block: a struct cannot go there, emit only the method. Further pattern
        // attributes stay, to report the missing `#[controller]` themselves.
        let errors = errors.into_compile_error();
        return quote!(#func #errors);
    }

    // A second pattern attribute would make a second type of the same name: removed, reported,
    // and its use kept.
    let mut markers = Vec::new();
    for extra in func
        .attrs
        .extract_if(.., |attr| RouteKind::of(attr.path()).is_some())
    {
        if let Some(extra_kind) = RouteKind::of(extra.path()) {
            errors.push(extra_pattern_error(
                route_kind,
                extra_kind,
                &extra,
                Kind::Free,
            ));
        }
        markers.push(use_marker(extra.path()));
    }

    // Even when the handler is wrong, the type is emitted so that `.handler::<name>()`
    // elsewhere reports nothing more.
    let route = handler.as_ref().map_or_else(
        || {
            quote!(::core::unreachable!(
                "rmq-bus: this handler did not compile"
            ))
        },
        Handler::free_route,
    );
    let cfgs: Vec<&Attribute> = cfg_attributes(&func.attrs).collect();
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let errors = errors.into_compile_error();
    quote! {
        #func

        #(#cfgs)*
        #[allow(non_camel_case_types)]
        #[doc(hidden)]
        #vis struct #ident {}

        #(#cfgs)*
        impl ::rmq_bus::__private::HandlerFn for #ident {
            fn route() -> ::rmq_bus::__private::Route {
                #route
            }
        }

        #(#markers)*
        #errors
    }
}

/// The pattern and the `ordered_by` key of a handler attribute's arguments, as [`analyze`] takes
/// the pattern (`None`: wrong, reported in `errors`).
pub(crate) fn split_args(
    route_kind: RouteKind,
    args: TokenStream,
    errors: &mut Errors,
) -> (Option<Option<crate::pattern::Pattern>>, Option<LitStr>) {
    let allowed = route_kind == RouteKind::Event;
    let Some((rest, ordered_by)) = errors.check(crate::ordering::split_ordered_by(
        args,
        allowed,
        "a request handler",
    )) else {
        return (None, None);
    };
    (
        errors.check(route_kind.parse_handler_pattern(rest)),
        ordered_by,
    )
}
