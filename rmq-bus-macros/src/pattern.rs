//! The two kinds of handlers (`#[event_pattern]`, `#[message_pattern]`) and their pattern: a
//! string, or an object written as `key = value` pairs and normalised as NestJS does.

use std::fmt::Write as _;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, Lit, LitStr, Path, Token};

/// Whether a handler answers events (`#[event_pattern]`) or requests (`#[message_pattern]`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKind {
    /// `#[event_pattern]`: NestJS's `@EventPattern`, no reply.
    Event,
    /// `#[message_pattern]`: NestJS's `@MessagePattern`, answers the request.
    Message,
}

impl RouteKind {
    /// The kind of handler the attribute at `path` makes, if it is one of ours: `event_pattern`,
    /// `message_pattern`, or either behind `rmq_bus::`.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let segments: Vec<String> = path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["event_pattern"] | ["rmq_bus", "event_pattern"] => Some(Self::Event),
            ["message_pattern"] | ["rmq_bus", "message_pattern"] => Some(Self::Message),
            _ => None,
        }
    }

    /// The attribute's name: `event_pattern` or `message_pattern`.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Self::Event => "event_pattern",
            Self::Message => "message_pattern",
        }
    }

    /// What its handlers are called in messages: `event handler` or `request handler`.
    pub(crate) fn handler(self) -> &'static str {
        match self {
            Self::Event => "event handler",
            Self::Message => "request handler",
        }
    }

    /// A pattern for the examples of messages.
    fn example(self) -> &'static str {
        match self {
            Self::Event => "order_created",
            Self::Message => "get_order",
        }
    }

    /// The runtime's constructor of its routes: `event_route` or `message_route`, for handlers
    /// that check the message body themselves.
    pub(crate) fn route_constructor(self) -> TokenStream {
        match self {
            Self::Event => quote!(::rmq_bus::__private::event_route),
            Self::Message => quote!(::rmq_bus::__private::message_route),
        }
    }

    /// The runtime's function interpreting what a handler returns.
    pub(crate) fn interpret_output(self) -> TokenStream {
        match self {
            Self::Event => quote!(::rmq_bus::__private::IntoHandlerResult::into_handler_result),
            Self::Message => quote!(::rmq_bus::__private::IntoReply::into_reply),
        }
    }

    /// Parses a pattern written in `args` (also what a contract's attribute names).
    pub(crate) fn parse_pattern(self, args: TokenStream) -> syn::Result<Pattern> {
        (|input: ParseStream| parse(input, self)).parse2(args)
    }

    /// Parses the arguments of the attribute, given directly to the macro on a free function:
    /// `None` when there are none (the handler's payload type is a contract that names it).
    pub(crate) fn parse_handler_pattern(self, args: TokenStream) -> syn::Result<Option<Pattern>> {
        if args.is_empty() {
            return Ok(None);
        }
        self.parse_pattern(args).map(Some)
    }

    /// The contract trait a payload type names this kind's pattern through.
    pub(crate) fn contract_trait(self) -> TokenStream {
        match self {
            Self::Event => quote!(::rmq_bus::contract::Event),
            Self::Message => quote!(::rmq_bus::contract::Request),
        }
    }

    /// The missing-pattern error, when no payload is a contract either.
    pub(crate) fn missing_pattern_or_contract(self) -> String {
        let (attribute, example) = (self.attribute(), self.example());
        let (contract, ty) = match self {
            Self::Event => ("Event", "OrderCreated"),
            Self::Message => ("Request", "GetOrder"),
        };
        format!(
            "missing pattern: name it, `#[{attribute}(\"{example}\")]` (or `cmd = \"{example}\"` \
             for an object pattern), or take a contract as the payload, `#[payload] message: \
             {ty}` where `{ty}` derives `rmq_bus::contract::{contract}`"
        )
    }

    fn missing_pattern(self) -> String {
        let (attribute, example) = (self.attribute(), self.example());
        format!(
            "missing pattern: write `#[{attribute}(\"{example}\")]`, or `#[{attribute}(cmd = \
             \"{example}\")]` for an object pattern"
        )
    }
}

/// The pattern of a handler, as routed.
pub(crate) struct Pattern {
    /// NestJS's normalised form: the string itself, or the object as compact JSON with its keys
    /// sorted. Two handlers with the same key would take each other's messages.
    key: String,
    /// Where it is written: the string literal, or the `key = value` pairs.
    tokens: TokenStream,
    /// Whether it is an object pattern.
    object: bool,
}

impl Pattern {
    /// The normalised routing key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Whether it is an object pattern.
    pub(crate) fn is_object(&self) -> bool {
        self.object
    }

    /// `rmq_bus::__private::PatternKey<hash>`: the pattern as a type, a 128-bit FNV-1a hash of
    /// its normalised key, so that a handler and its payload's contract are compared while the
    /// program is type-checked. Spanned at where the pattern is written.
    pub(crate) fn key_type(&self) -> TokenStream {
        const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
        const PRIME: u128 = 0x0000000001000000000000000000013b;
        let hash = self.key.bytes().fold(OFFSET, |hash, byte| {
            (hash ^ u128::from(byte)).wrapping_mul(PRIME)
        });
        let hash = proc_macro2::Literal::u128_unsuffixed(hash);
        let span = self
            .tokens
            .clone()
            .into_iter()
            .next()
            .map_or_else(Span::call_site, |token| token.span());
        quote::quote_spanned!(span=> ::rmq_bus::__private::PatternKey<#hash>)
    }

    /// The pattern as a message shows it: `"order_created"`, or `{"cmd":"sum"}`.
    pub(crate) fn describe(&self) -> String {
        if self.object {
            self.key.clone()
        } else {
            format!("{:?}", self.key)
        }
    }

    /// An error spanned at where the pattern is written.
    pub(crate) fn error(&self, message: impl std::fmt::Display) -> syn::Error {
        syn::Error::new_spanned(&self.tokens, message)
    }
}

impl ToTokens for Pattern {
    /// The pattern as an expression of a type `impl Into<rmq_bus::Pattern>`.
    fn to_tokens(&self, tokens: &mut TokenStream) {
        if self.object {
            let json = LitStr::new(&self.key, Span::call_site());
            tokens.extend(quote!(::rmq_bus::__private::object_pattern(#json)));
        } else {
            self.tokens.to_tokens(tokens);
        }
    }
}

/// Parses a pattern: `"string"`, or `key = value, ...`.
fn parse(input: ParseStream, kind: RouteKind) -> syn::Result<Pattern> {
    if input.is_empty() {
        // Only at the top of the macro's own arguments: the attribute is the span.
        return Err(syn::Error::new(Span::call_site(), kind.missing_pattern()));
    }
    if input.peek(LitStr) && !input.peek2(Token![=]) {
        return parse_string(input, kind);
    }
    if (input.peek(Ident::peek_any) || input.peek(LitStr)) && input.peek2(Token![=]) {
        return parse_object(input, kind);
    }
    let rest: TokenStream = input.parse()?;
    let example = kind.example();
    Err(syn::Error::new_spanned(
        rest,
        format!(
            "expected a pattern: a string literal such as `\"{example}\"`, or `key = value` \
             pairs for an object pattern, such as `cmd = \"{example}\", version = 2`"
        ),
    ))
}

/// A string pattern, alone in the arguments.
fn parse_string(input: ParseStream, kind: RouteKind) -> syn::Result<Pattern> {
    let lit: LitStr = input.parse()?;
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    }
    if input.is_empty() {
        return Ok(Pattern {
            key: lit.value(),
            tokens: lit.into_token_stream(),
            object: false,
        });
    }
    let mixed = is_pair_ahead(input);
    let rest: TokenStream = input.parse()?;
    Err(syn::Error::new_spanned(
        rest,
        if mixed {
            mixed_pattern(kind)
        } else {
            format!(
                "`#[{}]` takes one pattern; remove the extra arguments (write another handler \
                 for another pattern)",
                kind.attribute()
            )
        },
    ))
}

/// Whether the input goes on with a `key = ...` pair.
fn is_pair_ahead(input: ParseStream) -> bool {
    (input.peek(Ident::peek_any) || input.peek(LitStr)) && input.peek2(Token![=])
}

fn mixed_pattern(kind: RouteKind) -> String {
    let example = kind.example();
    format!(
        "a pattern is either a string (`\"{example}\"`) or `key = value` pairs (`cmd = \
         \"{example}\"`), not both; keep one"
    )
}

/// An object pattern: `key = value` pairs, each key once, normalised as NestJS does (keys
/// sorted, compact JSON).
fn parse_object(input: ParseStream, kind: RouteKind) -> syn::Result<Pattern> {
    let tokens = input.fork().parse::<TokenStream>()?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    loop {
        if input.peek(LitStr) && !input.peek2(Token![=]) {
            let rest: TokenStream = input.parse()?;
            return Err(syn::Error::new_spanned(rest, mixed_pattern(kind)));
        }
        let (key, key_tokens) = parse_key(input)?;
        if !input.peek(Token![=]) {
            return Err(input.error(format!(
                "expected `=` and a value after the key `{key}`, such as `{key} = \"{}\"`",
                kind.example()
            )));
        }
        input.parse::<Token![=]>()?;
        let value = parse_value(input, &key)?;
        if pairs.iter().any(|(other, _)| *other == key) {
            return Err(syn::Error::new_spanned(
                key_tokens,
                format!("duplicate key `{key}` in the object pattern; remove one of them"),
            ));
        }
        pairs.push((key, value));
        if input.is_empty() {
            break;
        }
        if !input.peek(Token![,]) {
            let rest: TokenStream = input.parse()?;
            return Err(syn::Error::new_spanned(
                rest,
                "expected `,` between the `key = value` pairs of an object pattern",
            ));
        }
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
    }
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut key = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(&json_string(name));
        key.push(':');
        key.push_str(value);
    }
    key.push('}');
    Ok(Pattern {
        key,
        tokens,
        object: true,
    })
}

/// The key of a pair, an identifier (`cmd`, `r#type`) or a string (`"my-key"`), and its tokens.
fn parse_key(input: ParseStream) -> syn::Result<(String, TokenStream)> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Ok((lit.value(), lit.into_token_stream()));
    }
    let ident = Ident::parse_any(input)?;
    Ok((ident.unraw().to_string(), ident.into_token_stream()))
}

/// The value of a pair, as JSON: a string, a (possibly negative) number, or a boolean.
fn parse_value(input: ParseStream, key: &str) -> syn::Result<String> {
    let expected = || {
        format!(
            "expected a literal value for `{key}`: a string, a number or a boolean, such as \
             `cmd = \"sum\"` or `version = 2`"
        )
    };
    let minus: Option<Token![-]> = input.parse()?;
    if !input.peek(Lit) {
        // Everything up to the next pair, to point at all of it.
        let mut rest = minus.into_token_stream();
        while !input.is_empty() && !input.peek(Token![,]) {
            rest.extend([input.parse::<proc_macro2::TokenTree>()?]);
        }
        return Err(if rest.is_empty() {
            input.error(expected())
        } else {
            syn::Error::new_spanned(rest, expected())
        });
    }
    let lit: Lit = input.parse()?;
    let sign = if minus.is_some() { "-" } else { "" };
    let suffix = |suffix: &str| {
        (!suffix.is_empty()).then(|| {
            syn::Error::new_spanned(
                &lit,
                format!("remove the suffix `{suffix}`: pattern values are JSON numbers"),
            )
        })
    };
    match &lit {
        Lit::Int(int) => {
            if let Some(error) = suffix(int.suffix()) {
                return Err(error);
            }
            let digits = format!("{sign}{}", int.base10_digits());
            // What serde_json reads back as an integer, so that the pattern keeps its text.
            let value = if minus.is_some() {
                digits.parse::<i64>().map(|value| value.to_string())
            } else {
                digits.parse::<u64>().map(|value| value.to_string())
            };
            value.map_err(|_| {
                syn::Error::new_spanned(
                    quote!(#minus #lit),
                    "integer out of range: pattern integers fit in an `i64` or a `u64`",
                )
            })
        }
        Lit::Float(float) => {
            if let Some(error) = suffix(float.suffix()) {
                return Err(error);
            }
            let value = format!("{sign}{}", float.base10_digits())
                .parse::<f64>()
                .ok()
                .filter(|value| value.is_finite());
            value.map(|value| format!("{value:?}")).ok_or_else(|| {
                syn::Error::new_spanned(
                    quote!(#minus #lit),
                    "number out of range: pattern numbers fit in an `f64`",
                )
            })
        }
        Lit::Str(string) if minus.is_none() => Ok(json_string(&string.value())),
        Lit::Bool(boolean) if minus.is_none() => Ok(boolean.value.to_string()),
        _ => Err(syn::Error::new_spanned(quote!(#minus #lit), expected())),
    }
}

/// `s` as a JSON string, escaped as serde_json does.
fn json_string(s: &str) -> String {
    let mut json = String::with_capacity(s.len() + 2);
    json.push('"');
    for c in s.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            '\u{8}' => json.push_str("\\b"),
            '\u{c}' => json.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(json, "\\u{:04x}", u32::from(c));
            }
            c => json.push(c),
        }
    }
    json.push('"');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(args: TokenStream) -> String {
        match RouteKind::Message.parse_pattern(args) {
            Ok(pattern) => pattern.key,
            Err(error) => format!("error: {error}"),
        }
    }

    #[test]
    fn object_patterns_are_normalised() {
        assert_eq!(key(quote!(cmd = "sum")), r#"{"cmd":"sum"}"#);
        assert_eq!(
            key(quote!(
                version = 2,
                cmd = "order",
                "a-b" = true,
                r#type = -1.5,
            )),
            r#"{"a-b":true,"cmd":"order","type":-1.5,"version":2}"#
        );
        assert_eq!(
            key(quote!(n = -0x10, f = 2.0, e = 1e20)),
            r#"{"e":1e20,"f":2.0,"n":-16}"#
        );
        assert_eq!(
            key(quote!(s = "a\"b\\c\n\u{1}é")),
            r#"{"s":"a\"b\\c\n\u0001é"}"#
        );
        assert_eq!(key(quote!("order_created")), "order_created");
    }

    #[test]
    fn object_patterns_reject_misuse() {
        assert!(key(quote!(cmd = "a", cmd = "b")).starts_with("error: duplicate key `cmd`"));
        assert!(key(quote!(cmd = foo)).starts_with("error: expected a literal value for `cmd`"));
        assert!(key(quote!(cmd = -"x")).starts_with("error: expected a literal value"));
        assert!(key(quote!(n = 2u8)).starts_with("error: remove the suffix `u8`"));
        assert!(key(quote!(n = 18446744073709551616)).starts_with("error: integer out of range"));
        assert!(key(quote!(n = 1e400)).starts_with("error: number out of range"));
        assert!(key(quote!(cmd = "a", "b")).starts_with("error: a pattern is either"));
        assert!(key(quote!("b", cmd = "a")).starts_with("error: a pattern is either"));
        assert!(key(quote!(cmd = "a" version = 2)).starts_with("error: expected `,`"));
        assert!(key(quote!({ "cmd": "sum" })).starts_with("error: expected a pattern"));
    }
}
