//! SimCLR objective plugin: projection head + NT-Xent.
//!
//! - \[0\] SimCLR, Chen et al. 2020, <https://arxiv.org/abs/2002.05709>
//!
//! The host passes the encoder output `h` of the two augmented views (`[B, input_dim]` each);
//! this plugin runs the projection head `g` ([`Head::simclr`]) on each view, the
//! NT-Xent loss ([`loss::nt_xent`]) on `z = g(h)`; the SDK's autodiff does the backward. The head exists only for
//! training: downstream tasks use the encoder output `h`, and the head is discarded after
//! training (SimCLR section 4.2: `h` is a better representation than `z`).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size (resnet-mini gives 128) |
//! | `hidden_dim` | 512 | hidden width of the head |
//! | `output_dim` | 128 | size of `z` |
//! | `head` | true | false: the loss runs on `h` directly (no parameters) |
//! | `temperature` | 0.5 | τ, > 0 |
//! | `positive_in_denominator` | true | false: decoupled contrastive loss (DCL) |
//!
//! Metrics: `loss`, `pos_cosine`, `neg_cosine`, `top1`. Exactly two views; no target network
//! (`target_momentum` is 1).

pub mod loss;

use latent_sdk::prelude::*;

/// SimCLR settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projection head.
    pub hidden_dim: usize,
    /// Projection size.
    pub output_dim: usize,
    /// Use the projection head.
    pub head: bool,
    /// NT-Xent temperature τ.
    pub temperature: f64,
    /// Keep the positive in the denominator (NT-Xent); false gives DCL.
    pub positive_in_denominator: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_dim: 128,
            hidden_dim: 512,
            output_dim: 128,
            head: true,
            temperature: 0.5,
            positive_in_denominator: true,
        }
    }
}

/// The SimCLR objective.
pub struct SimClr {
    cfg: Config,
    /// The projection head `g` ([`Head::simclr`]; `None` with `head: false`).
    pub head: Option<Head>,
}

impl Plugin for SimClr {
    type Config = Config;
    const NAME: &'static str = "simclr";
    const DESCRIPTION: &'static str = "SimCLR: projection head + NT-Xent (or DCL) over two views";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(
            cfg.temperature > 0.0 && cfg.temperature.is_finite(),
            "temperature must be positive, got {}",
            cfg.temperature
        );
        if cfg.head {
            ensure!(
                cfg.input_dim > 0 && cfg.hidden_dim > 0 && cfg.output_dim > 0,
                "input_dim, hidden_dim and output_dim must be positive, got {}, {}, {}",
                cfg.input_dim,
                cfg.hidden_dim,
                cfg.output_dim
            );
        }
        let head = cfg.head.then(|| {
            Head::simclr(
                &Init::new(ctx.seed).pp("projector"),
                cfg.input_dim,
                cfg.hidden_dim,
                cfg.output_dim,
            )
        });
        Ok(SimClr { cfg, head })
    }
}

impl Module for SimClr {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(h) = &mut self.head {
            h.visit_params(f);
        }
    }
}

impl Objective for SimClr {
    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        ensure!(b.views.len() == 2, "simclr needs exactly 2 views, got {}", b.views.len());
        for (i, v) in b.views.iter().enumerate() {
            let (n, d) = v.dims();
            if self.head.is_some() {
                ensure!(
                    d == self.cfg.input_dim,
                    "view {i} has {d} features but input_dim is {}",
                    self.cfg.input_dim
                );
            }
            ensure!(n >= 2, "simclr needs at least 2 samples per batch, got {n}");
        }
        // The head runs on each view separately: batch-norm statistics per view, as lightly.
        let z: Vec<Var> = match &mut self.head {
            Some(h) => b.views.iter().map(|v| h.forward(g, v)).collect(),
            None => b.views.clone(),
        };
        let loss = loss::nt_xent(
            &z[0],
            &z[1],
            self.cfg.temperature as f32,
            self.cfg.positive_in_denominator,
        );
        Ok(Loss { metrics: loss::metrics(&z[0], &z[1]), ..Loss::new(loss) })
    }
}

latent_sdk::export_plugins!(objectives: [SimClr], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
