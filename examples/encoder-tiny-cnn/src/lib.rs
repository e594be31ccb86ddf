//! `tiny-cnn`, an example encoder plugin in one file: a small convolutional network written as
//! its forward pass on the SDK's autodiff tape (no backward anywhere in this file; the
//! convolution, batch-norm and pooling kernels are the kit's, as custom ops on the tape).
//!
//! ```text
//! x                                                   [N, C, H, W]
//! for each width cᵢ of `channels`:
//!     Conv3x3(pad 1, no bias) → BatchNorm2d → ReLU    [N, cᵢ, H', W']
//!     MaxPool2x2 (all but the last stage)              halves H', W'
//! GlobalAvgPool                                       [N, c_last]
//! Linear (with `out_dim` > 0)                          [N, out_dim]
//! ```
//! With the default `channels = [16, 32, 64]` a 28x28 image becomes 64 features; the network
//! has ~24k parameters and runs a batch of 128 MNIST images in a few milliseconds.
//!
//! The image shape is known only when the host calls `out_dim([C, H, W])` (or at the first
//! forward), so the layers are built there, from `ctx.seed`. Parameters are named
//! `stage<i>.conv.weight`, `stage<i>.bn.{weight,bias,running_mean,running_var}`,
//! `fc.{weight,bias}`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `channels` | `[16, 32, 64]` | width of each conv stage (at least one) |
//! | `out_dim` | 0 | 0: the features are the pooled channels; else a final Linear to this size |

use latent_sdk::autodiff::nn::{BatchNorm2d, Conv2d, Linear};
use latent_sdk::autodiff::ops::{global_avg_pool, max_pool2d};
use latent_sdk::prelude::*;

/// The `tiny-cnn` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Width of each conv stage.
    pub channels: Vec<usize>,
    /// 0, or the size of a final Linear layer.
    pub out_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { channels: vec![16, 32, 64], out_dim: 0 }
    }
}

/// One stage: Conv3x3 (pad 1, no bias) → BatchNorm2d → ReLU.
pub struct Stage {
    /// `stage<i>.conv`.
    pub conv: Conv2d,
    /// `stage<i>.bn`.
    pub bn: BatchNorm2d,
}

/// The `tiny-cnn` encoder.
pub struct TinyCnn {
    cfg: Config,
    seed: u64,
    /// The input shape it was built for, the stages and the optional final Linear.
    net: Option<([usize; 3], Vec<Stage>, Option<Linear>)>,
}

impl TinyCnn {
    /// Output size.
    pub fn dim(&self) -> usize {
        if self.cfg.out_dim > 0 {
            self.cfg.out_dim
        } else {
            *self.cfg.channels.last().expect("checked in new")
        }
    }

    /// The layers for images of `shape`, built on first use.
    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<()> {
        if let Some((built, ..)) = &self.net {
            ensure!(
                *built == shape,
                "tiny-cnn was built for images of shape {built:?}, got {shape:?}"
            );
            return Ok(());
        }
        let [mut c, mut h, mut w] = shape;
        let init = Init::new(self.seed);
        let mut stages = Vec::new();
        for (i, &o) in self.cfg.channels.iter().enumerate() {
            let at = init.pp(format!("stage{i}"));
            stages.push(Stage {
                conv: Conv2d::new(&at.pp("conv"), c, o, 3, 1, 1),
                bn: BatchNorm2d::new(&at.pp("bn"), o),
            });
            if i + 1 < self.cfg.channels.len() {
                ensure!(
                    h >= 2 && w >= 2,
                    "tiny-cnn: images of shape {shape:?} are too small for {} stages",
                    self.cfg.channels.len()
                );
                (h, w) = (h / 2, w / 2);
            }
            c = o;
        }
        let fc =
            (self.cfg.out_dim > 0).then(|| Linear::new(&init.pp("fc"), c, self.cfg.out_dim, true));
        self.net = Some((shape, stages, fc));
        Ok(())
    }
}

impl Plugin for TinyCnn {
    type Config = Config;
    const NAME: &'static str = "tiny-cnn";
    const DESCRIPTION: &'static str =
        "small conv net: Conv3x3-BN-ReLU stages, max-pool, global average pool (example)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(!cfg.channels.is_empty(), "channels must list at least one stage width");
        ensure!(
            cfg.channels.iter().all(|&c| c >= 1),
            "every stage width must be at least 1, got {:?}",
            cfg.channels
        );
        Ok(TinyCnn { cfg, seed: ctx.seed, net: None })
    }
}

impl Module for TinyCnn {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((_, stages, fc)) = &mut self.net {
            for s in stages {
                s.conv.visit_params(f);
                s.bn.visit_params(f);
            }
            if let Some(fc) = fc {
                fc.visit_params(f);
            }
        }
    }
}

impl Encoder for TinyCnn {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.dim())
    }

    fn forward(&mut self, g: &Graph, images: &Var, chw: [usize; 3]) -> anyhow::Result<Var> {
        ensure!(
            !g.train() || images.rows() >= 2,
            "training with batch norm needs at least 2 images per batch, got {}",
            images.rows()
        );
        self.build(chw)?;
        let (_, stages, fc) = self.net.as_mut().expect("built above");
        let (mut x, mut shape) = (images.clone(), chw);
        let last = stages.len() - 1;
        for (i, s) in stages.iter_mut().enumerate() {
            let (y, sh) = s.conv.forward(g, &x, shape);
            x = s.bn.forward(g, &y, sh).relu();
            shape = sh;
            if i < last {
                (x, shape) = max_pool2d(&x, shape, 2, 2, 0);
            }
        }
        let pooled = global_avg_pool(&x, shape[0]);
        Ok(match fc {
            Some(fc) => fc.forward(g, &pooled),
            None => pooled,
        })
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [Taped<TinyCnn>], augmentations: []);
