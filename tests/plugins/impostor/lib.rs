//! A test-only library exporting a root module named like latent's (`latent_plugin`) with
//! another layout, as a plugin built against an incompatible ABI would. Two crates build it:
//! - `latent-test-wrong-layout` claims this host's ABI version, so the host reaches the layout
//!   check and must refuse it with "incompatible type layout";
//! - `latent-test-wrong-version` claims ABI 9.0.0, a future major version, so the host must
//!   refuse it by version, "incompatible ABI", before looking at any layout.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, StableAbi,
};

/// Not latent's `PluginLib`: one field, of another type.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLibRef)))]
#[sabi(missing_field(panic))]
pub struct PluginLib {
    /// A number where latent has a string.
    #[sabi(last_prefix_field)]
    pub abi_version: u64,
}

/// True in the crate `latent-test-wrong-version`.
const WRONG_VERSION: bool = same(env!("CARGO_PKG_NAME"), "latent-test-wrong-version");

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl RootModule for PluginLibRef {
    declare_root_module_statics! {PluginLibRef}
    const BASE_NAME: &'static str = "latent_plugin";
    const NAME: &'static str = "latent_plugin";
    const VERSION_STRINGS: VersionStrings =
        VersionStrings::new(if WRONG_VERSION { "9.0.0" } else { latent_abi::ABI_VERSION });
}

/// The root module.
#[export_root_module]
pub fn root() -> PluginLibRef {
    PluginLib { abi_version: 1 }.leak_into_prefix()
}
