//! Compile tests of the macros: every misuse they reject, with its message, and the forms they
//! accept.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
