//! The SimCLR projection head `g`: the kit's [`ProjectionHead`] (Linear → BatchNorm1d → ReLU →
//! Linear), run on each view separately.

pub use latent_sdk::kit::head::{backward_views, forward_views, ProjectionHead};
