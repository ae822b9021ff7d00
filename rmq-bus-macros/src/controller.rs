//! `#[controller]` on an inherent impl block: its `#[event_pattern]` methods become the routes of
//! a `Controller` impl.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Attribute, FnArg, ImplItem, ImplItemFn, Item, ItemImpl, Path};

use crate::args::{PatternArg, is_arg_attribute};
use crate::errors::Errors;
use crate::handler::{Handler, Kind, analyze, cfg_attributes, use_marker};

/// Expands `#[controller]`: the impl block without the rmq attributes, plus the `Controller`
/// impl routing each handler method.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.push(syn::Error::new_spanned(
            args,
            "`#[controller]` takes no arguments; write `#[controller]` and give each method its \
             pattern with `#[event_pattern(\"...\")]`",
        ));
    }
    let mut block = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(block)) => block,
        Ok(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[controller]` goes on an inherent impl block holding the handler methods: \
                 `impl MyController { ... }`",
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

    let mut markers = Vec::new();
    let handlers = handlers(&mut block, &mut markers, &mut errors);
    // The `#[event_pattern]`s removed still count as uses of the user's import.
    let markers = markers.iter().map(use_marker);
    if let Some((_, trait_path, _)) = &block.trait_ {
        errors.push(syn::Error::new_spanned(
            trait_path,
            "`#[controller]` goes on an inherent impl block, not a trait impl; put the handler \
             methods in `impl MyController { ... }`",
        ));
        let errors = errors.into_compile_error();
        return quote!(#block #(#markers)* #errors);
    }

    // Even with errors, the impl is emitted (with the valid handlers) so that
    // `.controller(...)` elsewhere reports nothing more.
    let routes = handlers.iter().map(|(handler, cfgs)| {
        let route = handler.method_route();
        quote! {
            #(#cfgs)*
            routes.push(#route);
        }
    });
    let cfgs = cfg_attributes(&block.attrs);
    let (impl_generics, _, where_clause) = block.generics.split_for_impl();
    let self_ty = &block.self_ty;
    let errors = errors.into_compile_error();
    quote! {
        #block

        #(#cfgs)*
        impl #impl_generics ::rmq_bus::__private::Controller for #self_ty #where_clause {
            fn routes(
                self: ::std::sync::Arc<Self>,
            ) -> ::std::vec::Vec<::rmq_bus::__private::Route> {
                #[allow(unused_mut)]
                let mut routes = ::std::vec::Vec::new();
                #(#routes)*
                routes
            }
        }

        #(#markers)*
        #errors
    }
}

/// The handler methods of `block`, with their `#[cfg]`s, in declaration order. Removes the rmq
/// attributes from every method, adding the paths of the `#[event_pattern]`s to `markers`.
fn handlers(
    block: &mut ItemImpl,
    markers: &mut Vec<Path>,
    errors: &mut Errors,
) -> Vec<(Handler, Vec<Attribute>)> {
    let mut handlers: Vec<(Handler, Vec<Attribute>)> = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        let Some(handler) = handler(method, markers, errors) else {
            continue;
        };
        let duplicate = handlers
            .iter()
            .find(|(other, _)| other.pattern.value() == handler.pattern.value());
        if let Some((first, _)) = duplicate {
            errors.push(syn::Error::new_spanned(
                &handler.pattern,
                format!(
                    "pattern {:?} already has a handler in this controller (`{}`); a pattern \
                     routes to one handler, remove one of them",
                    handler.pattern.value(),
                    first.ident
                ),
            ));
            continue;
        }
        let cfgs = cfg_attributes(&method.attrs).cloned().collect();
        handlers.push((handler, cfgs));
    }
    handlers
}

/// The handler of `method`, if it is marked `#[event_pattern]` and valid. Removes the
/// `#[event_pattern]` attributes (adding their paths to `markers`) and those of its arguments.
fn handler(
    method: &mut ImplItemFn,
    markers: &mut Vec<Path>,
    errors: &mut Errors,
) -> Option<Handler> {
    let (patterns, attrs) = std::mem::take(&mut method.attrs)
        .into_iter()
        .partition::<Vec<_>, _>(|attr| is_event_pattern(attr.path()));
    method.attrs = attrs;

    let Some((first, extra)) = patterns.split_first() else {
        // Not a handler: argument attributes would mean a forgotten `#[event_pattern]`.
        for input in &mut method.sig.inputs {
            let FnArg::Typed(arg) = input else { continue };
            for attr in arg.attrs.extract_if(.., |attr| is_arg_attribute(attr)) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "argument attributes go on handlers; mark this method \
                     `#[event_pattern(\"...\")]`",
                ));
            }
        }
        return None;
    };
    markers.push(first.path().clone());
    for extra in extra {
        errors.push(syn::Error::new_spanned(
            extra,
            "a handler has one `#[event_pattern]`; remove this one (write another method for \
             another pattern)",
        ));
    }
    let pattern = errors.check(PatternArg::from_attribute(first));
    analyze(
        &mut method.sig,
        pattern.map(|pattern| pattern.lit),
        Kind::Method,
        errors,
    )
}

/// Whether `path` names the `event_pattern` macro: `event_pattern` or `rmq_bus::event_pattern`.
fn is_event_pattern(path: &Path) -> bool {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    matches!(
        segments.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ["event_pattern"] | ["rmq_bus", "event_pattern"]
    )
}
