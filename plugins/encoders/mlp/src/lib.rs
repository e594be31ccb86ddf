//! MLP encoder plugin `mlp`: the flattened image through fully connected layers.
//!
//! ```text
//! h₀ = flatten(x)                                   [N, C·H·W]
//! hᵢ = ReLU(BN(Linear(hᵢ₋₁)))   for each hidden size (BN and no Linear bias with batch_norm,
//!                                 else ReLU(Linear(hᵢ₋₁)) with bias)
//! y  = Linear(h_last)                               [N, out_dim]
//! ```
//! The input size is known only once the host calls `out_dim([C, H, W])` (or at the first
//! forward); the layers are built then, from `ctx.seed`. Parameters: `hidden.<i>.linear.*`,
//! `hidden.<i>.bn.*`, `out.weight`, `out.bias`.
//!
//! With `device = "cuda:N"` the host offers its GPU and the mlp accepts: the same layers run
//! there ([`cuda`]), with cuBLAS products and the batch-norm kernels of `latent-cuda`.

pub mod cuda;

use latent_sdk::kit::{Flatten, Sequential};
use latent_sdk::prelude::*;

/// The `mlp` config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// Output (feature) size.
    pub out_dim: usize,
    /// Batch norm after each hidden Linear.
    pub batch_norm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { hidden: vec![256], out_dim: 128, batch_norm: true }
    }
}

/// The `mlp` encoder.
pub struct Mlp {
    cfg: Config,
    seed: u64,
    /// Input size and the layers, once known.
    net: Option<(usize, Sequential)>,
    /// Batch size of the training forward waiting for its backward.
    pending: Option<usize>,
    /// The network on the host's GPU, once bound.
    gpu: Option<cuda::OnGpu>,
}

impl Mlp {
    fn build(&mut self, input: usize) -> anyhow::Result<&mut Sequential> {
        if let Some((d, _)) = &self.net {
            ensure!(*d == input, "mlp was built for images of {d} values, got {input}");
        } else {
            ensure!(input >= 1, "images must hold at least one value");
            let init = Init::new(self.seed);
            let mut net = Sequential::new().push(Flatten::new());
            let mut d = input;
            for (i, &h) in self.cfg.hidden.iter().enumerate() {
                let at = init.pp(format!("hidden.{i}"));
                net = net.push(Linear::new(&at.pp("linear"), d, h, !self.cfg.batch_norm));
                if self.cfg.batch_norm {
                    net = net.push(BatchNorm::new(&at.pp("bn"), h));
                }
                net = net.push(Relu::new());
                d = h;
            }
            net = net.push(Linear::new(&init.pp("out"), d, self.cfg.out_dim, true));
            self.net = Some((input, net));
        }
        Ok(&mut self.net.as_mut().expect("built above").1)
    }
}

impl Plugin for Mlp {
    type Config = Config;
    const NAME: &'static str = "mlp";
    const DESCRIPTION: &'static str =
        "multilayer perceptron on the flattened image (Linear-BN-ReLU per hidden layer)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.out_dim >= 1, "out_dim must be at least 1");
        ensure!(
            cfg.hidden.iter().all(|&h| h >= 1),
            "every hidden size must be at least 1, got {:?}",
            cfg.hidden
        );
        Ok(Mlp { cfg, seed: ctx.seed, net: None, pending: None, gpu: None })
    }
}

impl Module for Mlp {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((_, net)) = &mut self.net {
            net.visit_params(f);
        }
    }
}

impl EncoderPlugin for Mlp {
    fn out_dim(&mut self, [c, h, w]: [usize; 3]) -> anyhow::Result<usize> {
        self.build(c * h * w)?;
        Ok(self.cfg.out_dim)
    }

    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor> {
        ensure!(self.gpu.is_none(), "mlp is bound to a GPU: use forward_device");
        let (n, c, h, w) = images.dims4("images")?;
        ensure!(
            !train || !self.cfg.batch_norm || self.cfg.hidden.is_empty() || n >= 2,
            "training with batch norm needs at least 2 images per batch, got {n}"
        );
        let y = self.build(c * h * w)?.forward(&images, train);
        self.pending = train.then_some(n);
        Ok(y)
    }

    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        let n = self.pending.take().context("backward without a training forward before it")?;
        let (gn, gd) = grad.dims2("feature gradient")?;
        ensure!(
            (gn, gd) == (n, self.cfg.out_dim),
            "feature gradient has shape [{gn}, {gd}], the last training forward gave [{n}, {}]",
            self.cfg.out_dim
        );
        let (_, net) = self.net.as_mut().context("backward before any forward")?;
        net.backward(&grad);
        Ok(())
    }

    fn bind_device(&mut self, binding: DeviceBinding) -> anyhow::Result<bool> {
        let (input, net) = self.net.as_mut().context("bind_device before out_dim")?;
        let mut layers = Vec::new();
        let mut d = *input;
        for &h in &self.cfg.hidden {
            layers.push((d, h, !self.cfg.batch_norm, self.cfg.batch_norm));
            d = h;
        }
        let on = cuda::OnGpu::new(&binding, net, *input, &layers, self.cfg.out_dim)?;
        self.gpu = Some(on);
        Ok(true)
    }

    fn forward_device(
        &mut self,
        images: DeviceTensorDesc,
        train: bool,
    ) -> anyhow::Result<DeviceTensorDesc> {
        self.gpu.as_mut().context("forward_device before bind_device")?.forward(&images, train)
    }

    fn backward_device(&mut self, grad: DeviceTensorDesc) -> anyhow::Result<()> {
        self.gpu.as_mut().context("backward_device before bind_device")?.backward(&grad)
    }

    fn params_to_host(&mut self) -> anyhow::Result<()> {
        match (&self.gpu, &mut self.net) {
            (Some(g), Some((_, net))) => g.values_to_host(net),
            _ => Ok(()),
        }
    }

    fn params_to_device(&mut self) -> anyhow::Result<()> {
        match (&mut self.gpu, &mut self.net) {
            (Some(g), Some((_, net))) => g.values_to_device(net),
            _ => Ok(()),
        }
    }

    fn device_params(&mut self) -> anyhow::Result<Vec<DeviceParam>> {
        Ok(self.gpu.as_ref().map(|g| g.device_params()).unwrap_or_default())
    }

    fn grads_to_host(&mut self) -> anyhow::Result<()> {
        match (&mut self.gpu, &mut self.net) {
            (Some(g), Some((_, net))) => g.grads_to_host(net),
            _ => Ok(()),
        }
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [Mlp], augmentations: []);
