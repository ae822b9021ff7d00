//! `#[derive(Event)]` and `#[derive(Request)]`: a type bound to its pattern (and, for a request,
//! its reply type), implementing `rmq_bus::contract::Event` or `rmq_bus::contract::Request`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::ParseStream;
use syn::{Attribute, DeriveInput, Expr, ExprLit, Ident, Lit, LitStr, Meta, Token, Type};

use crate::errors::Errors;
use crate::pattern::{Pattern, RouteKind};

/// Which contract a derive makes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContractKind {
    /// `#[derive(Event)]` with `#[event(...)]`.
    Event,
    /// `#[derive(Request)]` with `#[request(...)]`.
    Request,
}

impl ContractKind {
    fn attribute(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Request => "request",
        }
    }

    fn route_kind(self) -> RouteKind {
        match self {
            Self::Event => RouteKind::Event,
            Self::Request => RouteKind::Message,
        }
    }

    /// How its attribute is written, for messages.
    fn usage(self) -> &'static str {
        match self {
            Self::Event => {
                "`#[event(pattern = \"order_created\")]`, or `#[event(pattern(cmd = \"order_created\"))]` for an object pattern"
            }
            Self::Request => {
                "`#[request(pattern = \"get_order\", reply = Order)]`, or `#[request(pattern(cmd = \"get_order\"), reply = Order)]` for an object pattern"
            }
        }
    }
}

/// What the contract attribute says.
#[derive(Default)]
struct Arguments {
    pattern: Option<Pattern>,
    reply: Option<Type>,
    /// `ordered_by = "path"`, an event's ordering key.
    ordered_by: Option<LitStr>,
}

/// Expands the derive: the trait impl, or the errors (spanned at the offending tokens).
pub(crate) fn derive(kind: ContractKind, input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Errors::default();
    let arguments = arguments(kind, &input.attrs, &mut errors);
    let description = doc_comment(&input.attrs);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let ident = &input.ident;
    let (Some(pattern), false) = (arguments.pattern, !errors.is_empty()) else {
        return errors.into_compile_error();
    };
    let key = LitStr::new(pattern.key(), Span::call_site());
    let object = pattern.is_object();
    let key_type = pattern.key_type();
    let pattern_key = quote! {
        impl #impl_generics ::rmq_bus::__private::PatternKeyOf for #ident #ty_generics #where_clause {
            type Key = #key_type;
        }
    };
    let name = LitStr::new(&ident.to_string(), ident.span());
    let payload_schema = schema_fn(quote!(__payload_schema), quote!(Self));
    let ordered_by = crate::ordering::option_tokens(arguments.ordered_by.as_ref());
    match kind {
        ContractKind::Event => quote! {
            impl #impl_generics ::rmq_bus::contract::Event for #ident #ty_generics #where_clause {
                const PATTERN: &'static str = #key;
                const OBJECT_PATTERN: bool = #object;
                const DESCRIPTION: &'static str = #description;
                const NAME: &'static str = #name;
                const ORDERED_BY: ::core::option::Option<&'static str> = #ordered_by;
                #payload_schema
            }

            impl #impl_generics ::rmq_bus::contract::Contract for #ident #ty_generics #where_clause {
                fn __described() -> ::rmq_bus::__private::Described {
                    ::rmq_bus::__private::describe_event::<Self>()
                }
            }
            #pattern_key
        },
        ContractKind::Request => {
            let Some(reply) = arguments.reply else {
                return errors.into_compile_error();
            };
            let reply_schema = schema_fn(quote!(__reply_schema), quote!(#reply));
            quote! {
                impl #impl_generics ::rmq_bus::contract::Request for #ident #ty_generics #where_clause {
                    const PATTERN: &'static str = #key;
                    const OBJECT_PATTERN: bool = #object;
                    const DESCRIPTION: &'static str = #description;
                    const NAME: &'static str = #name;
                    type Reply = #reply;
                    #payload_schema
                    #reply_schema
                }

                impl #impl_generics ::rmq_bus::contract::Contract for #ident #ty_generics #where_clause {
                    fn __described() -> ::rmq_bus::__private::Described {
                        ::rmq_bus::__private::describe_request::<Self>()
                    }
                }
                #pattern_key
            }
        }
    }
}

/// A contract trait's schema function `name`: the JSON Schema of `ty` if it implements
/// `schemars::JsonSchema` (and rmq-bus has its `asyncapi` feature), else none. The macro cannot
/// know either, so an autoref probe picks at compile time.
fn schema_fn(name: TokenStream, ty: TokenStream) -> TokenStream {
    quote! {
        fn #name(
            schemas: &mut ::rmq_bus::__private::Schemas,
        ) -> ::core::option::Option<::rmq_bus::__private::Value> {
            #[allow(unused_imports)]
            use ::rmq_bus::__private::{BySchema as _, NoSchema as _};
            (&&::rmq_bus::__private::SchemaProbe::<#ty>::new()).schema(schemas)
        }
    }
}

/// Reads the one `#[event(...)]` or `#[request(...)]` attribute.
fn arguments(kind: ContractKind, attrs: &[Attribute], errors: &mut Errors) -> Arguments {
    let name = kind.attribute();
    let mut found = attrs.iter().filter(|attr| attr.path().is_ident(name));
    let Some(attr) = found.next() else {
        errors.push(syn::Error::new(
            Span::call_site(),
            format!("missing `#[{name}(...)]`: write {}", kind.usage()),
        ));
        return Arguments::default();
    };
    for extra in found {
        errors.push(syn::Error::new_spanned(
            extra,
            format!("a type has one `#[{name}(...)]`; remove this one"),
        ));
    }
    let parsed = match &attr.meta {
        Meta::List(list) => {
            let what = "a request contract";
            crate::ordering::split_ordered_by(
                list.tokens.clone(),
                kind == ContractKind::Event,
                what,
            )
            .and_then(|(rest, ordered_by)| {
                let parse = |input: ParseStream| parse(kind, input);
                let arguments = syn::parse::Parser::parse2(parse, rest)?;
                Ok(Arguments {
                    ordered_by,
                    ..arguments
                })
            })
        }
        _ => Err(syn::Error::new_spanned(
            attr,
            format!("expected arguments: write {}", kind.usage()),
        )),
    };
    let arguments = errors.check(parsed).unwrap_or_default();
    if arguments.pattern.is_none() && errors.is_empty() {
        errors.push(syn::Error::new_spanned(
            attr,
            format!("missing `pattern`: write {}", kind.usage()),
        ));
    }
    if kind == ContractKind::Request && arguments.reply.is_none() && errors.is_empty() {
        errors.push(syn::Error::new_spanned(
            attr,
            "missing `reply`: a request names the type of its reply, as \
             `#[request(pattern = \"get_order\", reply = Order)]` (`reply = ()` for none)",
        ));
    }
    arguments
}

/// `pattern = "…"` or `pattern(key = value, …)`, and for a request `reply = Type`.
fn parse(kind: ContractKind, input: ParseStream) -> syn::Result<Arguments> {
    let mut arguments = Arguments::default();
    while !input.is_empty() {
        let key: Ident = input.parse()?;
        if key == "pattern" && arguments.pattern.is_some()
            || key == "reply" && arguments.reply.is_some()
        {
            return Err(syn::Error::new_spanned(
                &key,
                format!("duplicate `{key}`; remove one"),
            ));
        }
        if key == "pattern" && input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            let tokens: TokenStream = content.parse()?;
            arguments.pattern = Some(kind.route_kind().parse_pattern(tokens)?);
        } else if key == "pattern" {
            input.parse::<Token![=]>()?;
            let lit: LitStr = input.parse()?;
            arguments.pattern = Some(kind.route_kind().parse_pattern(quote!(#lit))?);
        } else if key == "reply" && kind == ContractKind::Request {
            input.parse::<Token![=]>()?;
            arguments.reply = Some(input.parse()?);
        } else {
            let expected = match kind {
                ContractKind::Event => "`pattern`",
                ContractKind::Request => "`pattern` and `reply`",
            };
            return Err(syn::Error::new_spanned(
                &key,
                format!(
                    "unknown argument `{key}`: `#[{}]` takes {expected}; write {}",
                    kind.attribute(),
                    kind.usage()
                ),
            ));
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(arguments)
}

/// The doc comment among `attrs` (a type's or a handler's), its lines trimmed and joined, for
/// generated documentation.
pub(crate) fn doc_comment(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(doc) => match &doc.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(text),
                    ..
                }) => Some(text.value().trim().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.join("\n").trim().to_owned()
}
