//! FaceNet triplet objective plugin with all / batch-hard / semi-hard mining.
//!
//! - \[0\] FaceNet, Schroff et al. 2015, <https://arxiv.org/abs/1503.03832>
//!
//! Supervised (`NEEDS_LABELS`: the host samples class-balanced P x K batches). The embeddings
//! of all views are stacked into one `[V·B, D]` matrix (view `v` row `i` becomes row
//! `v·B + i`) with the labels repeated per view, so the other views of a sample are positives
//! too. An optional linear head maps them to `head_dim` first; then [`loss::triplet`]
//! (L2-normalise, squared distances, mining, margin loss).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `margin` | 0.2 | α, ≥ 0 (FaceNet's value; distances of unit vectors lie in [0, 4]) |
//! | `mining` | `"semi-hard"` | `"all"`, `"batch-hard"` or `"semi-hard"` (see [`loss`]) |
//! | `head_dim` | none | a Linear(`input_dim` -> `head_dim`, with bias) before the normalisation |
//! | `input_dim` | 128 | encoder output size (used with `head_dim`) |
//!
//! Metrics: `loss`, `triplets`, `active_fraction`, `d_ap`, `d_an`. No target network.

pub mod loss;

use latent_sdk::prelude::*;
use loss::Mining;

/// Triplet settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Margin α.
    pub margin: f64,
    /// Triplet mining.
    pub mining: Mining,
    /// Output size of the optional linear head.
    pub head_dim: Option<usize>,
    /// Encoder output size (checked when there is a head).
    pub input_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { margin: 0.2, mining: Mining::SemiHard, head_dim: None, input_dim: 128 }
    }
}

/// The triplet objective.
pub struct Triplet {
    cfg: Config,
    /// `head.weight` `[head_dim, input_dim]`, `head.bias` `[head_dim]`.
    pub head: Option<latent_sdk::autodiff::nn::Linear>,
}

impl Plugin for Triplet {
    type Config = Config;
    const NAME: &'static str = "triplet";
    const DESCRIPTION: &'static str =
        "FaceNet triplet loss on L2-normalised embeddings (all / batch-hard / semi-hard mining)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(
            cfg.margin >= 0.0 && cfg.margin.is_finite(),
            "margin must be non-negative, got {}",
            cfg.margin
        );
        if let Some(h) = cfg.head_dim {
            ensure!(
                h > 0 && cfg.input_dim > 0,
                "head_dim and input_dim must be positive, got {h} and {}",
                cfg.input_dim
            );
        }
        let head = cfg.head_dim.map(|h| {
            latent_sdk::autodiff::nn::Linear::new(
                &Init::new(ctx.seed).pp("head"),
                cfg.input_dim,
                h,
                true,
            )
        });
        Ok(Triplet { cfg, head })
    }
}

impl Module for Triplet {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(h) = &mut self.head {
            h.visit_params(f);
        }
    }
}

impl Objective for Triplet {
    const NEEDS_LABELS: bool = true;

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        ensure!(!b.views.is_empty(), "triplet needs at least one view");
        let (n, d) = b.views[0].dims();
        for (i, v) in b.views.iter().enumerate() {
            ensure!(
                v.dims() == (n, d),
                "view {i} has shape {:?}, view 0 has {:?}",
                v.dims(),
                (n, d)
            );
        }
        ensure!(n > 0 && d > 0, "views must be non-empty, got shape {:?}", (n, d));
        ensure!(b.labels.len() == n, "{n} samples per view but {} labels", b.labels.len());
        if self.head.is_some() {
            ensure!(
                d == self.cfg.input_dim,
                "views have {d} features but input_dim is {}",
                self.cfg.input_dim
            );
        }
        // every view of every sample is an anchor, with the sample's label
        let x = cat_rows(&b.views.iter().collect::<Vec<_>>());
        let labels: Vec<i64> = (0..b.views.len()).flat_map(|_| b.labels.iter().copied()).collect();
        let e = match &self.head {
            Some(h) => h.forward(g, &x),
            None => x,
        };
        let (loss, metrics) = loss::triplet(&e, &labels, self.cfg.margin, self.cfg.mining)?;
        Ok(Loss { metrics, ..Loss::new(loss) })
    }
}

latent_sdk::export_plugins!(objectives: [Triplet], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
