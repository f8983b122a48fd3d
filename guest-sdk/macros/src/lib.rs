//! The `#[job]` attribute of `wasmesh-guest`: turns a plain function into the entry point
//! of a wasm32-wasip1 command.

use proc_macro::TokenStream;
use quote::{quote, quote_spanned};
use syn::{FnArg, ItemFn, parse_macro_input, spanned::Spanned};

/// Makes `fn run(input: In) -> Out` (or `-> Result<Out, E>`) the job's entry point.
///
/// `In` is anything implementing `wasmesh_guest::FromInput` (`Json<T>`, `Vec<u8>`,
/// `String`, `()`), `Out` anything implementing `wasmesh_guest::IntoOutput`. The function
/// may also take no argument. The attribute generates `fn main`, which reads stdin,
/// calls the function, writes the output to stdout and exits 0; an error is printed to
/// stderr and exits 1; input that does not parse exits 2.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let function = parse_macro_input!(item as ItemFn);
    match expand(attr, function) {
        Ok(tokens) => tokens.into(),
        // A stand-in `main` keeps the compiler from adding "`main` function not found"
        // to the one error that matters.
        Err(error) => {
            let error = error.to_compile_error();
            quote! { #error fn main() {} }.into()
        }
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    function: ItemFn,
) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(attr, "#[job] takes no arguments"));
    }
    let sig = &function.sig;
    if sig.ident == "main" {
        return Err(syn::Error::new_spanned(
            &sig.ident,
            "#[job] generates `main` itself: name the job function something else, e.g. `run`",
        ));
    }
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            token,
            "#[job] functions cannot be async: a job runs to completion on one thread",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[job] functions cannot be generic: the input type must be concrete",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "#[job] functions cannot be variadic",
        ));
    }
    let name = &sig.ident;
    let (call, input_check) = match sig.inputs.len() {
        0 => (quote! { |_: ()| #name() }, quote! {}),
        1 => match &sig.inputs[0] {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new_spanned(
                    receiver,
                    "#[job] must be a free function, not a method",
                ));
            }
            FnArg::Typed(arg) => {
                // Checked here, at the argument's type, so an unsupported input type is
                // reported where it is written rather than at the attribute.
                let ty = &arg.ty;
                let check = quote_spanned! { ty.span() =>
                    const _: fn() = || {
                        fn input_type<T: ::wasmesh_guest::FromInput>() {}
                        input_type::<#ty>();
                    };
                };
                (quote! { #name }, check)
            }
        },
        _ => {
            return Err(syn::Error::new_spanned(
                &sig.inputs[1],
                "#[job] functions take at most one argument, the input (e.g. `input: Json<MyInput>`)",
            ));
        }
    };
    Ok(quote! {
        #function

        #input_check

        fn main() {
            ::wasmesh_guest::__private::run(#call)
        }
    })
}
