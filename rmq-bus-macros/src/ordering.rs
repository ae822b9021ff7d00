//! `ordered_by = "path"`: the ordering key an event handler or an event contract names, taken
//! out of the attribute's arguments before the pattern is parsed.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::LitStr;

/// The argument's name.
const ORDERED_BY: &str = "ordered_by";

/// Splits `ordered_by = "path"` off `args`: the other arguments, and the path if there is one.
/// `allowed` says whether the attribute takes one (`what` names it in the error otherwise).
pub(crate) fn split_ordered_by(
    args: TokenStream,
    allowed: bool,
    what: &str,
) -> syn::Result<(TokenStream, Option<LitStr>)> {
    let mut rest: Vec<Vec<TokenTree>> = Vec::new();
    let mut found: Option<LitStr> = None;
    for segment in segments(args) {
        let is_ordered_by = matches!(segment.first(), Some(TokenTree::Ident(ident)) if ident == ORDERED_BY)
            && matches!(segment.get(1), Some(TokenTree::Punct(punct)) if punct.as_char() == '=');
        if !is_ordered_by {
            rest.push(segment);
            continue;
        }
        let tokens: TokenStream = segment.iter().cloned().collect();
        if !allowed {
            return Err(syn::Error::new_spanned(
                tokens,
                format!(
                    "{what} cannot be ordered: `ordered_by` goes on event handlers \
                     (`#[event_pattern(\"order_updated\", ordered_by = \"orderId\")]`) and event \
                     contracts"
                ),
            ));
        }
        if found.is_some() {
            return Err(syn::Error::new_spanned(
                tokens,
                "duplicate `ordered_by`; a handler is ordered by one key, keep one",
            ));
        }
        let value: TokenStream = segment[2..].iter().cloned().collect();
        let lit = syn::parse2::<LitStr>(value.clone()).map_err(|_| {
            syn::Error::new_spanned(
                &value,
                "expected the key's path in the data as a string: `ordered_by = \"orderId\"` \
                 (dotted for nesting: `\"order.id\"`)",
            )
        })?;
        let path = lit.value();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(syn::Error::new_spanned(
                &lit,
                format!(
                    "{path:?} is not a path into the data: write the key's name as on the wire, \
                     `\"orderId\"`, dotted for nesting, `\"order.id\"`"
                ),
            ));
        }
        found = Some(lit);
    }
    let mut tokens = TokenStream::new();
    for (i, segment) in rest.into_iter().enumerate() {
        if i > 0 {
            tokens.extend(quote::quote!(,));
        }
        tokens.extend(segment);
    }
    Ok((tokens, found))
}

/// The top-level comma-separated segments of `args` (a trailing comma makes no empty one).
fn segments(args: TokenStream) -> Vec<Vec<TokenTree>> {
    let mut segments = vec![Vec::new()];
    for token in args {
        match &token {
            TokenTree::Punct(punct) if punct.as_char() == ',' => segments.push(Vec::new()),
            _ => {
                if let Some(last) = segments.last_mut() {
                    last.push(token);
                }
            }
        }
    }
    segments.retain(|segment| !segment.is_empty());
    segments
}

/// `ordered_by` as the runtime takes it: `Some("path")` or `None`.
pub(crate) fn option_tokens(path: Option<&LitStr>) -> TokenStream {
    match path {
        Some(lit) => {
            let lit = lit.to_token_stream();
            quote::quote!(::core::option::Option::Some(#lit))
        }
        None => quote::quote!(::core::option::Option::None),
    }
}
