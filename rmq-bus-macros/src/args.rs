//! Argument attributes: where each argument of a handler comes from (`#[payload]`,
//! `#[payload("key")]`, `#[ctx]`, or none).

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::{Attribute, LitStr, Meta};

use crate::errors::Errors;

/// Where a handler argument comes from.
pub(crate) enum ArgSource {
    /// `#[payload]`: the whole data, deserialized.
    Payload,
    /// `#[payload("key")]`: one key of the data, deserialized.
    PayloadField(LitStr),
    /// `#[ctx]`: the delivery context.
    Context,
    /// No attribute: extracted by its type (`FromMessage`).
    Extract,
}

impl ArgSource {
    fn name(&self) -> &'static str {
        match self {
            ArgSource::Payload | ArgSource::PayloadField(_) => "#[payload]",
            ArgSource::Context => "#[ctx]",
            ArgSource::Extract => "",
        }
    }
}

/// Whether `attr` is one this crate gives meaning to on an argument: `payload` or `ctx`.
pub(crate) fn is_arg_attribute(attr: &Attribute) -> bool {
    attr.path().is_ident("payload") || attr.path().is_ident("ctx")
}

/// Whether `attr` is a lint attribute, which rustc accepts on arguments and the macros keep.
fn is_lint_attribute(attr: &Attribute) -> bool {
    ["allow", "warn", "deny", "forbid", "expect"]
        .iter()
        .any(|lint| attr.path().is_ident(lint))
}

/// Removes the attributes of a handler argument and says where it comes from. Lint attributes
/// stay; anything else is removed even when wrong, so that rustc does not report it a second time.
pub(crate) fn take_arg_source(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> ArgSource {
    let mut source = ArgSource::Extract;
    for attr in std::mem::take(attrs) {
        if is_lint_attribute(&attr) {
            attrs.push(attr);
            continue;
        }
        let Some(this) = errors.check(parse_arg_attribute(&attr)) else {
            continue;
        };
        if matches!(source, ArgSource::Extract) {
            source = this;
        } else if source.name() == this.name() {
            errors.push(syn::Error::new_spanned(
                &attr,
                format!("duplicate `{}` on this argument; remove it", this.name()),
            ));
        } else {
            errors.push(syn::Error::new_spanned(
                &attr,
                format!(
                    "conflicting attributes: this argument already has `{}`; an argument is \
                     either the payload (`#[payload]`) or the context (`#[ctx]`), keep one",
                    source.name()
                ),
            ));
        }
    }
    source
}

/// Reads one argument attribute.
fn parse_arg_attribute(attr: &Attribute) -> syn::Result<ArgSource> {
    let path = attr.path();
    if path.is_ident("payload") {
        match &attr.meta {
            Meta::Path(_) => Ok(ArgSource::Payload),
            Meta::List(list) if list.tokens.is_empty() => Err(syn::Error::new_spanned(
                attr,
                "expected a key: write `#[payload(\"key\")]` for one key of the data, or \
                 `#[payload]` for all of it",
            )),
            Meta::List(list) => list.parse_args_with(parse_key).map(ArgSource::PayloadField),
            Meta::NameValue(name_value) => Err(syn::Error::new_spanned(
                &name_value.value,
                "write the key in parentheses: `#[payload(\"key\")]`",
            )),
        }
    } else if path.is_ident("ctx") {
        match &attr.meta {
            Meta::Path(_) => Ok(ArgSource::Context),
            Meta::List(list) => Err(syn::Error::new_spanned(
                &list.tokens,
                "`#[ctx]` takes no arguments; write `#[ctx]`",
            )),
            Meta::NameValue(name_value) => Err(syn::Error::new_spanned(
                &name_value.value,
                "`#[ctx]` takes no arguments; write `#[ctx]`",
            )),
        }
    } else {
        Err(syn::Error::new_spanned(
            attr,
            "unknown attribute on a handler argument; use `#[payload]` (the data), \
             `#[payload(\"key\")]` (one key of it) or `#[ctx]` (the context), or none to \
             extract the argument by its type",
        ))
    }
}

/// The key of `#[payload("key")]`.
fn parse_key(input: ParseStream) -> syn::Result<LitStr> {
    let lookahead = input.lookahead1();
    if !lookahead.peek(LitStr) {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new_spanned(
            rest,
            "expected the key as a string literal: `#[payload(\"key\")]`",
        ));
    }
    let key: LitStr = input.parse()?;
    if !input.is_empty() {
        let rest: TokenStream = input.parse()?;
        return Err(syn::Error::new_spanned(
            rest,
            "`#[payload]` takes one key; remove the extra arguments",
        ));
    }
    Ok(key)
}
