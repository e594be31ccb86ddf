//! `template-encoder`: an encoder plugin.
//!
//! ```text
//! x [N, C·H·W] → Linear → BatchNorm1d → ReLU → Linear → [N, out_dim]
//! ```
//! The forward pass only: `Taped<TemplateEncoder>` (in `export_plugins!`) records it on the SDK's
//! autodiff tape and runs it backward from the host's d loss / d features. Images arrive
//! flattened, with their `[C, H, W]` beside them; the layers are built in `out_dim` (the image
//! size is known only then), from `ctx.seed`. Convolutions, 2-d batch-norm and pooling are in
//! `latent_sdk::autodiff::{nn, ops}` (the `tiny-cnn` example uses them).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `hidden` | 256 | hidden width |
//! | `out_dim` | 128 | feature size (the default objective, simclr, expects 128) |

use latent_sdk::autodiff::nn::{BatchNorm1d, Linear};
use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Hidden width.
    pub hidden: usize,
    /// Feature size.
    pub out_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { hidden: 256, out_dim: 128 }
    }
}

/// The layers, named `fc1.*`, `bn1.*`, `fc2.*`.
pub struct Net {
    fc1: Linear,
    bn1: BatchNorm1d,
    fc2: Linear,
}

/// The encoder.
pub struct TemplateEncoder {
    cfg: Config,
    seed: u64,
    /// The input shape it was built for, and the layers.
    net: Option<([usize; 3], Net)>,
}

impl TemplateEncoder {
    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<&mut Net> {
        if let Some((built, _)) = &self.net {
            ensure!(
                *built == shape,
                "template-encoder was built for images of shape {built:?}, got {shape:?}"
            );
        } else {
            let init = Init::new(self.seed);
            let net = Net {
                fc1: Linear::new(&init.pp("fc1"), shape.iter().product(), self.cfg.hidden, false),
                bn1: BatchNorm1d::new(&init.pp("bn1"), self.cfg.hidden),
                fc2: Linear::new(&init.pp("fc2"), self.cfg.hidden, self.cfg.out_dim, true),
            };
            self.net = Some((shape, net));
        }
        Ok(&mut self.net.as_mut().expect("built above").1)
    }
}

impl Plugin for TemplateEncoder {
    type Config = Config;
    const NAME: &'static str = "template-encoder";
    const DESCRIPTION: &'static str = "two-layer MLP on the flattened image";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.hidden >= 1 && cfg.out_dim >= 1, "hidden and out_dim must be at least 1");
        Ok(TemplateEncoder { cfg, seed: ctx.seed, net: None })
    }
}

impl Module for TemplateEncoder {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((_, net)) = &mut self.net {
            net.fc1.visit_params(f);
            net.bn1.visit_params(f);
            net.fc2.visit_params(f);
        }
    }
}

impl Encoder for TemplateEncoder {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.cfg.out_dim)
    }

    fn forward(&mut self, g: &Graph, images: &Var, chw: [usize; 3]) -> anyhow::Result<Var> {
        ensure!(
            !g.train() || images.rows() >= 2,
            "training with batch norm needs at least 2 images, got {}",
            images.rows()
        );
        let net = self.build(chw)?;
        let h = net.fc1.forward(g, images);
        let h = net.bn1.forward(g, &h).relu();
        Ok(net.fc2.forward(g, &h))
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [Taped<TemplateEncoder>], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;

    #[test]
    fn gradients_match_finite_differences() {
        // through the ABI object, as the host calls it (and `latent check-plugin --deep`)
        let ctx = Context::default();
        let cfg = abi_stable::std_types::RStr::from_str("{\"hidden\": 6, \"out_dim\": 3}");
        let mut enc = latent_sdk::plugin::new_encoder::<Taped<TemplateEncoder>>(cfg, &ctx).unwrap();
        enc.out_dim(vec![1u64, 2, 3].into()).unwrap();
        let opts = latent_sdk::check::FdOptions { h: 1e-2, ..Default::default() };
        let errs = latent_sdk::check::encoder_gradients(&mut enc, &random(&[4, 1, 2, 3], 7), opts)
            .unwrap();
        assert!(errs.len() == 5 && errs.iter().all(|e| e.error < 2e-2), "{errs:?}");
    }
}
