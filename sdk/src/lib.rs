//! # latent-sdk: the plugin ABI of `latent` and the kit to write plugins with
//!
//! `latent` loads objectives, encoders and augmentations from separately compiled libraries.
//! This crate is everything a plugin and the host share, in two clearly separate halves:
//!
//! - [`abi`]: the stable contract. `#[repr(C)]` types checked by abi_stable at load time:
//!   tensors as plain descriptors ([`abi::TensorDesc`]), manifests, parameter descriptors,
//!   errors, the three plugin-object traits and the prefix-type root module
//!   ([`abi::PluginLib`]). Nothing Rust-specific (no dfdx type) crosses.
//! - [`plugin`] and [`kit`]: compiled into each plugin, never crossing. [`plugin`] holds the
//!   traits an author implements ([`plugin::ObjectivePlugin`], [`plugin::EncoderPlugin`],
//!   [`plugin::AugmentationPlugin`]) and the wrappers that catch panics at the boundary;
//!   [`kit`] holds runtime-shaped layers (Linear, BatchNorm, ReLU, ...) with hand-written
//!   backward and finite-difference checks.
//!
//! ## The contract, Caffe-style
//! - An **encoder** does `forward(images [N,C,H,W], train) -> features [N,D]` and
//!   `backward(d loss / d features)`, accumulating parameter gradients.
//! - An **objective** receives the online embeddings of each view (plus target-network
//!   embeddings and labels when its manifest asks), runs its heads, and returns the loss,
//!   d loss / d embeddings, named metrics, and the EMA rate τ for the target network.
//! - Both expose their parameters as named buffers with roles ([`abi::ParamRole`]): trained
//!   with or without weight decay, buffers (batch-norm statistics), or EMA targets of a named
//!   online parameter. One optimizer, one EMA rule and one checkpoint writer in the host
//!   serve every plugin.
//! - An **augmentation** is a pure function of (image, seed), shared by loader threads.
//!
//! ## Ownership, threads, errors
//! Tensors cross by value: the receiver owns the buffer. The host calls an encoder or
//! objective from one thread at a time (`Send`); augmentations are `Send + Sync` and are called
//! from many loader threads at once. Every call runs under `catch_unwind` in the SDK wrapper; a
//! panic becomes [`abi::PluginError`] (`plugin 'x' panicked: ...`) and poisons the instance.
//!
//! ## A plugin in one file
//! ```ignore
//! use latent_sdk::prelude::*;
//!
//! #[derive(Default, Serialize, Deserialize)]
//! #[serde(default, deny_unknown_fields)]
//! pub struct Config { pub scale: f32 }
//!
//! pub struct MyLoss { cfg: Config }
//! impl Plugin for MyLoss {
//!     type Config = Config;
//!     const NAME: &'static str = "my-loss";
//!     const DESCRIPTION: &'static str = "what it does, in one line";
//!     fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> { Ok(MyLoss { cfg }) }
//! }
//! impl Module for MyLoss { fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {} }
//! impl ObjectivePlugin for MyLoss {
//!     fn compute(&mut self, batch: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> { todo!() }
//! }
//! latent_sdk::export_plugins!(objectives: [MyLoss], encoders: [], augmentations: []);
//! ```
//!
//! ## Versioning
//! The library's SDK version is checked at load (abi_stable: same major, and for 0.x the same
//! minor). Adding a field below the root module's last prefix field, or a method below a
//! trait's, is a minor change; changing or removing anything that crosses is a major one.

#![warn(missing_docs)]

pub mod abi;
pub mod kit;
pub mod plugin;

/// Everything a plugin file usually needs.
pub mod prelude {
    pub use crate::abi::{Context, ParamRole};
    pub use crate::kit::{BatchNorm, Init, Layer, Linear, Module, Param, Relu, Sequential, Tensor};
    pub use crate::plugin::{
        AugmentationPlugin, EncoderPlugin, ObjectiveBatch, ObjectivePlugin, ObjectiveResult, Plugin,
    };
    pub use anyhow::{bail, ensure, Context as _};
    pub use serde::{Deserialize, Serialize};
}

pub use anyhow;
pub use serde;
pub use serde_json;
