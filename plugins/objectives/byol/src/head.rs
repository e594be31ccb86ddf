//! BYOL's projector and predictor: the kit's [`ProjectionHead`] (Linear → BatchNorm1d → ReLU →
//! Linear) and its EMA target copy, run on each view separately.

pub use latent_sdk::kit::head::{backward_views, forward_views, ProjectionHead};
