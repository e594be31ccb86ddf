//! A test-only dynamic library that exports no root module: `latent check-plugin` must say so.

/// Some symbol, so the library is not empty.
#[no_mangle]
pub extern "C" fn latent_test_hello() -> u32 {
    42
}
