//! `#[controller]` on an inherent impl block: its `#[event_pattern]` and `#[message_pattern]`
//! methods become the routes of a `Controller` impl.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Attribute, FnArg, ImplItem, ImplItemFn, Item, ItemImpl, Path};

use crate::args::is_arg_attribute;
use crate::errors::Errors;
use crate::handler::{
    Handler, Kind, analyze, cfg_attributes, extra_pattern_error, split_args, use_marker,
};
use crate::pattern::RouteKind;

/// Expands `#[controller]`: the impl block without the rmq attributes, plus the `Controller`
/// impl routing each handler method.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.push(syn::Error::new_spanned(
            args,
            "`#[controller]` takes no arguments; write `#[controller]` and give each method its \
             pattern with `#[event_pattern(\"...\")]` or `#[message_pattern(\"...\")]`",
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
    // The pattern attributes removed still count as uses of the user's imports.
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
/// attributes from every method, adding the paths of the pattern attributes to `markers`. A
/// pattern (normalised, whatever the kind) routes to one handler.
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
        // Patterns named by contract types are known only at run time: `start` checks those.
        if let Some(pattern) = handler.named_pattern() {
            let duplicate = handlers.iter().find(|(other, _)| {
                other
                    .named_pattern()
                    .is_some_and(|other| other.key() == pattern.key())
            });
            if let Some((first, _)) = duplicate {
                errors.push(pattern.error(format!(
                    "pattern {} already has a handler in this controller (`{}`); a pattern \
                     routes to one handler, remove one of them",
                    pattern.describe(),
                    first.ident
                )));
                continue;
            }
        }
        let cfgs = cfg_attributes(&method.attrs).cloned().collect();
        handlers.push((handler, cfgs));
    }
    handlers
}

/// The handler of `method`, if it is marked `#[event_pattern]` or `#[message_pattern]` and valid.
/// Removes the pattern attributes (adding their paths to `markers`) and those of its arguments.
fn handler(
    method: &mut ImplItemFn,
    markers: &mut Vec<Path>,
    errors: &mut Errors,
) -> Option<Handler> {
    let mut patterns: Vec<(RouteKind, Attribute)> = Vec::new();
    method
        .attrs
        .retain(|attr| match RouteKind::of(attr.path()) {
            Some(route_kind) => {
                patterns.push((route_kind, attr.clone()));
                false
            }
            None => true,
        });

    let Some(((route_kind, first), extra)) = patterns.split_first() else {
        // Not a handler: argument attributes would mean a forgotten pattern attribute.
        for input in &mut method.sig.inputs {
            let FnArg::Typed(arg) = input else { continue };
            for attr in arg.attrs.extract_if(.., |attr| is_arg_attribute(attr)) {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "argument attributes go on handlers; mark this method \
                     `#[event_pattern(\"...\")]` or `#[message_pattern(\"...\")]`",
                ));
            }
        }
        return None;
    };
    for (extra_kind, extra) in extra {
        errors.push(extra_pattern_error(
            *route_kind,
            *extra_kind,
            extra,
            Kind::Method,
        ));
    }
    markers.extend(patterns.iter().map(|(_, attr)| attr.path().clone()));
    let args = match &first.meta {
        syn::Meta::List(list) => list.tokens.clone(),
        _ => proc_macro2::TokenStream::new(),
    };
    let (pattern, ordered_by) = split_args(*route_kind, args, errors);
    analyze(&mut method.sig, *route_kind, pattern, Kind::Method, errors)
        .map(|handler| handler.documented(&method.attrs).ordered_by(ordered_by))
}
