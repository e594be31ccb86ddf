//! `tiny-cnn`, an example encoder plugin in one file: a small convolutional network from kit
//! layers.
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

use latent_sdk::kit::{Conv2d, Conv2dConfig, GlobalAvgPool, MaxPool2d, Sequential};
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

/// The `tiny-cnn` encoder.
pub struct TinyCnn {
    cfg: Config,
    seed: u64,
    /// The input shape it was built for, and the layers.
    net: Option<([usize; 3], Sequential)>,
    /// Batch size of the training forward waiting for its backward.
    pending: Option<usize>,
}

impl TinyCnn {
    /// Output size.
    pub fn dim(&self) -> usize {
        if self.cfg.out_dim > 0 { self.cfg.out_dim } else { *self.cfg.channels.last().expect("checked in new") }
    }

    /// The layers for images of `shape`, built on first use.
    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<&mut Sequential> {
        if let Some((built, _)) = &self.net {
            ensure!(*built == shape, "tiny-cnn was built for images of shape {built:?}, got {shape:?}");
        } else {
            let [mut c, mut h, mut w] = shape;
            let init = Init::new(self.seed);
            let mut net = Sequential::new();
            let last = self.cfg.channels.len() - 1;
            for (i, &o) in self.cfg.channels.iter().enumerate() {
                let at = init.pp(format!("stage{i}"));
                net = net
                    .push(Conv2d::new(&at.pp("conv"), c, o, 3, Conv2dConfig { padding: 1, bias: false, ..Default::default() }))
                    .push(BatchNorm::new(&at.pp("bn"), o))
                    .push(Relu::new());
                if i < last {
                    ensure!(h >= 2 && w >= 2, "tiny-cnn: images of shape {shape:?} are too small for {} stages", self.cfg.channels.len());
                    net = net.push(MaxPool2d::new(2, 2, 0));
                    (h, w) = (h / 2, w / 2);
                }
                c = o;
            }
            net = net.push(GlobalAvgPool::new());
            if self.cfg.out_dim > 0 {
                net = net.push(Linear::new(&init.pp("fc"), c, self.cfg.out_dim, true));
            }
            self.net = Some((shape, net));
        }
        Ok(&mut self.net.as_mut().expect("built above").1)
    }
}

impl Plugin for TinyCnn {
    type Config = Config;
    const NAME: &'static str = "tiny-cnn";
    const DESCRIPTION: &'static str = "small conv net: Conv3x3-BN-ReLU stages, max-pool, global average pool (example)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(!cfg.channels.is_empty(), "channels must list at least one stage width");
        ensure!(cfg.channels.iter().all(|&c| c >= 1), "every stage width must be at least 1, got {:?}", cfg.channels);
        Ok(TinyCnn { cfg, seed: ctx.seed, net: None, pending: None })
    }
}

impl Module for TinyCnn {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((_, net)) = &mut self.net {
            net.visit_params(f);
        }
    }
}

impl EncoderPlugin for TinyCnn {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.dim())
    }

    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (n, c, h, w) = images.dims4("images")?;
        ensure!(!train || n >= 2, "training with batch norm needs at least 2 images per batch, got {n}");
        let y = self.build([c, h, w])?.forward(&images, train);
        self.pending = train.then_some(n);
        Ok(y)
    }

    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        let n = self.pending.take().context("backward without a training forward before it")?;
        let d = self.dim();
        let (gn, gd) = grad.dims2("feature gradient")?;
        ensure!((gn, gd) == (n, d), "feature gradient has shape [{gn}, {gd}], the last training forward gave [{n}, {d}]");
        let (_, net) = self.net.as_mut().context("backward before any forward")?;
        net.backward(&grad);
        Ok(())
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [TinyCnn], augmentations: []);
