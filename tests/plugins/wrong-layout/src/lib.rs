//! A test-only library exporting a root module named like latent's (`latent_plugin`, same
//! version) but with another layout, as a plugin built against an incompatible SDK would.
//! The host must refuse it with "incompatible type layout".
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule, package_version_strings,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RStr, StableAbi,
};

/// Not latent's `PluginLib`: one field, of another type.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginLibRef)))]
#[sabi(missing_field(panic))]
pub struct PluginLib {
    /// A number where latent has a string.
    #[sabi(last_prefix_field)]
    pub sdk_version: u64,
}

impl RootModule for PluginLibRef {
    declare_root_module_statics! {PluginLibRef}
    const BASE_NAME: &'static str = "latent_plugin";
    const NAME: &'static str = "latent_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.1.0");
}

#[allow(dead_code)]
fn unused() -> (RStr<'static>, VersionStrings) {
    (RStr::from_str(""), package_version_strings!())
}

/// The root module.
#[export_root_module]
pub fn root() -> PluginLibRef {
    PluginLib { sdk_version: 1 }.leak_into_prefix()
}
