//! # latent-plugin-pipeline: the standard augmentations
//!
//! One augmentation plugin, `pipeline`, built from small transforms, one file each, with its
//! maths and defaults in the module doc:
//!
//! | module | transform | defaults |
//! |---|---|---|
//! | [`crop`] | random resized crop, antialiased bilinear | scale 0.08–1, ratio 3/4–4/3 |
//! | [`flip`] | horizontal flip | p 0.5 |
//! | [`jitter`] | colour jitter in random order | 0.8, 0.8, 0.8, 0.2; p 0.8 |
//! | [`grayscale`] | random grayscale, ITU-R 601-2 luma | p 0.2 |
//! | [`blur`] | Gaussian blur, kernel 10% of the side | σ 0.1–2; p 0.5 |
//! | [`solarize`] | solarization | threshold 0.5; p 0.2 |
//! | [`normalize`] | per-channel mean/std | ImageNet |
//!
//! [`pipeline`] documents the config and the `simclr` / `byol` presets. Every transform works
//! on `[C, H, W]` f32 planes ([`planes::Planes`]) of 1 or 3 channels and any size; a view is a
//! pure function of (image, seed): randomness comes from a ChaCha8 generator seeded with the
//! seed, never from thread state, so the host's loader threads get the same views in any order.
//!
//! Speed: no per-pixel allocation; filter weights are computed once per axis and call; work is
//! separable over f32 planes (see `examples/throughput.rs`).
//!
//! [0] SimCLR: Chen et al., A Simple Framework for Contrastive Learning of Visual
//!     Representations, 2020, <https://arxiv.org/abs/2002.05709> (appendix A).
//! [1] BYOL: Grill et al., Bootstrap Your Own Latent, 2020, <https://arxiv.org/abs/2006.07733>
//!     (table 6).

#![warn(missing_docs)]

pub mod blur;
pub mod crop;
pub mod flip;
pub mod grayscale;
pub mod jitter;
pub mod normalize;
pub mod pipeline;
pub mod planes;
pub mod solarize;

pub use pipeline::{Config, Op, Pipeline};

/// The library's root module (the SDK macro's items carry no docs of their own).
#[allow(missing_docs)]
mod exports {
    use super::Pipeline;
    latent_sdk::export_plugins!(objectives: [], encoders: [], augmentations: [Pipeline]);
}
