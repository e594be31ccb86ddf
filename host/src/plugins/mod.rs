//! Plugins as the host sees them: finding and loading libraries ([`registry`]), the checked
//! handles around plugin objects ([`handles`]), the watchdog on every call ([`watchdog`]),
//! `latent check-plugin --deep` ([`deep_check`]) and `latent new-plugin` ([`new_plugin`]).
//!
//! Search path, in order: every `--plugin-dir`, then the entries of `LATENT_PLUGIN_PATH`
//! (`:`-separated), then the default: the directory of the `latent` binary and its `plugins/`
//! subdirectory (so it works right after `cargo build` and after an install that copies the
//! libraries beside the binary). A file is a candidate when its name is a platform dynamic
//! library (`lib*.so`, `*.dylib`, `*.dll`) that exports latent's root module.
//!
//! Loading goes through abi_stable's `lib_header_from_path(..)?.init_root_module::<M>()`, which
//! checks the abi_stable header, the ABI version and every type layout; libraries are never
//! unloaded. The handles ([`Encoder`], [`Objective`], [`Augment`]) turn every [`latent_abi::PluginError`]
//! into an `anyhow` error and check what comes back (shapes, lengths, finite values), so a
//! faulty plugin ends in a message naming it and the call, never in a crash of the host.

pub mod deep_check;
pub mod handles;
pub mod new_plugin;
pub mod registry;
pub mod watchdog;

pub use handles::{Augment, Encoder, Objective, ParamAccess};
pub use registry::{load_library, manifests, search_path, Entry, Registry};
