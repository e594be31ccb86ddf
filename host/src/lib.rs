//! # latent-host: the `latent` runtime
//!
//! The host owns everything that is not a plugin: the device, data loading and augmentation
//! scheduling, the training loop, the one optimizer, the EMA target network, checkpoints,
//! evaluation and the CLI. Plugins (objectives, encoders, augmentations) are loaded from
//! dynamic libraries through the ABI of `latent-abi` ([`plugins`]).
//!
//! One folder per concern, in the order a run meets them:
//! - [`cli`]: the `latent` commands; [`config`]: the TOML experiment config and `--set`.
//! - [`device`]: the config's `device`, a CUDA GPU opened once (or a clear error).
//! - [`plugins`]: the search path and loading, checked handles around plugin objects, the
//!   watchdog on every call, `check-plugin --deep` and `new-plugin`.
//! - [`data`]: dataset readers, the threaded reproducible loader, and what a config asks of
//!   them ([`data::experiment`]: the dataset, the views, the loader settings).
//! - [`train`]: the run in phases ([`train::run`]), one step across the boundary
//!   ([`train::learner`]), the optimizer and schedules ([`train::optim`]), atomic checkpoints,
//!   the run directory, signals, `metrics.jsonl` and the per-epoch evaluation.
//! - [`eval`]: kNN, linear probe, collapse metrics, the report with its baselines, and the
//!   `latent eval` / `latent embed` commands.
//! - [`memory`]: the allocator settings that let every step reuse the last one's pages.
//! - [`inspect`]: what a researcher looks at: the run's plots, `latent views`, `neighbours`,
//!   `map` and `runs`.

pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod inspect;
pub mod memory;
pub mod plugins;
pub mod train;
