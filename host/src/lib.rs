//! # latent-host: the `latent` runtime
//!
//! The host owns everything that is not a plugin: the device, data loading and augmentation
//! scheduling, the training loop, the one optimizer, the EMA target network, checkpoints,
//! evaluation and the CLI. Plugins (objectives, encoders, augmentations) are loaded from
//! dynamic libraries through `latent-sdk`'s ABI ([`plugins`]).
//!
//! Modules:
//! - [`plugins`]: search path, loading with abi_stable, checked handles around plugin objects.
//! - [`cli`]: the `latent` commands.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod evaluate;
pub mod learner;
pub mod metrics;
pub mod new_plugin;
pub mod optim;
pub mod plot;
pub mod report;
pub mod plugins;
pub mod train;
pub mod watchdog;
