//! # latent-host: the `latent` runtime
//!
//! The host owns everything that is not a plugin: the device, data loading and augmentation
//! scheduling, the training loop, the one optimizer, the EMA target network, checkpoints,
//! evaluation and the CLI. Plugins (objectives, encoders, augmentations) are loaded from
//! dynamic libraries through `latent-sdk`'s ABI ([`plugins`]).
//!
//! Modules, in the order a training step meets them:
//! - [`cli`]: the `latent` commands; [`config`]: the TOML experiment config and `--set`;
//!   [`deep_check`]: `check-plugin --deep`, finite differences and determinism through the ABI.
//! - [`plugins`]: search path, loading with abi_stable, checked handles around plugin objects;
//!   [`watchdog`]: a plugin call that never returns ends the run with a clear error.
//! - [`data`]: dataset readers and the threaded, reproducible loader.
//! - [`learner`]: one training step across the boundary, the EMA target;
//!   [`optim`]: SGD / AdamW / LARS and the learning-rate schedule.
//! - [`train`]: the run loop, [`checkpoint`]: atomic safetensors checkpoints,
//!   [`metrics`] and [`plot`]: `metrics.jsonl` and PNG charts.
//! - [`inspect`]: what a researcher looks at: the run's plots, `latent views`, `neighbours`,
//!   `map` and `runs`.
//! - [`eval`]: kNN, linear probe, collapse metrics; [`report`]: the table with baselines;
//!   [`evaluate`]: `latent eval` and `latent embed`.
//! - [`new_plugin`]: `latent new-plugin`, a crate skeleton that builds and trains as it is.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod deep_check;
pub mod data;
pub mod eval;
pub mod evaluate;
pub mod inspect;
pub mod learner;
pub mod metrics;
pub mod new_plugin;
pub mod optim;
pub mod plot;
pub mod report;
pub mod plugins;
pub mod train;
pub mod watchdog;
