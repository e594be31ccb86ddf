//! ResNet encoder plugin `resnet`: CIFAR-style ResNets of BasicBlocks, shaped at run time.
//!
//! ```text
//! stem:   conv3x3(C_in -> stem_width, stride 1, pad 1, no bias) BN ReLU  [max-pool 3/2/1 if stem_pool]
//! stage i (i = 1..): blocks[i] BasicBlocks of width widths[i]; the first has stride 2 for i > 1
//! BasicBlock(cin -> cout, s):
//!     h = BN(conv3x3(ReLU(BN(conv3x3(x, s))), 1))
//!     y = ReLU(h + shortcut(x)),  shortcut = identity, or conv1x1(s) + BN when s != 1 or cin != cout
//! head:   global average pool -> [N, widths.last()]
//! ```
//! He et al., Deep Residual Learning for Image Recognition, 2015, arXiv:1512.03385; the CIFAR
//! variant (3x3 stem, no max-pool) as in torchvision's resnet18 with `conv1` replaced.
//!
//! # Presets
//! - `resnet-mini` (default): stem 32, widths [32, 64, 128], 1 block each. 306,784 parameters
//!   with C_in = 1 (the benchmark model).
//! - `resnet18-cifar`: stem 64, widths [64, 128, 256, 512], 2 blocks each. 11,168,832
//!   parameters with C_in = 3.
//! - `custom`: `stem_width`, `widths`, `blocks` given in the config.
//!
//! # Batch-norm statistics
//! `bn_groups` G (default 1): in training, every batch-norm takes its statistics over G equal
//! consecutive slices of the batch instead of the whole batch. The host sets it to the number
//! of views for `train.batch_norm = "per_view"` (one slice per view: the maths of one encoder
//! pass per view, as in lightly's examples); any other value is the user's own choice.
//!
//! `sync_batch_norm` (default false): in a data-parallel run (`mpirun -np N latent train`), the
//! statistics of each slice span every rank's images, as PyTorch's `SyncBatchNorm`: the
//! forward pass all-reduces Σx and Σx² per channel, the backward pass Σg and Σg·x̂. The host
//! sets it for `train.sync_batchnorm = true`; in one process it changes nothing.
//!
//! With `device = "cuda:N"` the host offers its GPU and the resnet accepts: the same maths run
//! there ([`cuda`]: cuDNN convolutions, NVRTC kernels for the rest), except `stem_pool`, which
//! is refused on a GPU for now.
//!
//! Parameters are named as PyTorch would (`stem.conv.weight`, `stage1.0.bn1.running_mean`,
//! `stage2.0.shortcut.conv.weight`) and counted as trainable weights plus batch-norm affine.

use latent_sdk::kit::{Conv2d, Conv2dConfig, GlobalAvgPool, MaxPool2d};
use latent_sdk::prelude::*;

pub mod bn;
pub mod cuda;
use bn::BnRelu;
use rayon::prelude::*;
use std::sync::Arc;

/// The `resnet` config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `resnet-mini`, `resnet18-cifar` or `custom`.
    pub preset: String,
    /// Image channels C_in.
    pub in_channels: usize,
    /// Stem width (custom only; defaults to the first stage's width).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stem_width: Option<usize>,
    /// Width of each stage (custom only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<usize>>,
    /// BasicBlocks in each stage (custom only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Vec<usize>>,
    /// A 3x3 stride-2 max-pool after the stem (ImageNet style); off for small images.
    pub stem_pool: bool,
    /// Batch-norm training statistics per this many equal slices of the batch (1: the whole
    /// batch; the number of views: per view).
    pub bn_groups: usize,
    /// In a data-parallel run, batch-norm training statistics over the global batch (every
    /// rank's slice, through the host's collective) instead of this rank's slice; the host
    /// sets it for `train.sync_batchnorm = true`. Nothing changes in one process.
    pub sync_batch_norm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            preset: "resnet-mini".into(),
            in_channels: 1,
            stem_width: None,
            widths: None,
            blocks: None,
            stem_pool: false,
            bn_groups: 1,
            sync_batch_norm: false,
        }
    }
}

/// The resolved architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct Arch {
    /// Stem width.
    pub stem_width: usize,
    /// Stage widths.
    pub widths: Vec<usize>,
    /// Blocks per stage.
    pub blocks: Vec<usize>,
}

impl Config {
    /// The architecture this config names, or an error a user can act on.
    pub fn arch(&self) -> anyhow::Result<Arch> {
        ensure!(self.in_channels >= 1, "in_channels must be at least 1, got {}", self.in_channels);
        ensure!(self.bn_groups >= 1, "bn_groups must be at least 1, got {}", self.bn_groups);
        let preset = |s: usize, w: &[usize], b: &[usize]| Arch {
            stem_width: s,
            widths: w.to_vec(),
            blocks: b.to_vec(),
        };
        let arch = match self.preset.as_str() {
            "resnet-mini" => preset(32, &[32, 64, 128], &[1, 1, 1]),
            "resnet18-cifar" => preset(64, &[64, 128, 256, 512], &[2, 2, 2, 2]),
            "custom" => {
                let widths = self
                    .widths
                    .clone()
                    .context("preset custom needs `widths` (one width per stage)")?;
                let blocks = self
                    .blocks
                    .clone()
                    .context("preset custom needs `blocks` (blocks per stage)")?;
                ensure!(!widths.is_empty(), "widths must name at least one stage");
                ensure!(
                    widths.len() == blocks.len(),
                    "widths has {} stages but blocks has {}",
                    widths.len(),
                    blocks.len()
                );
                ensure!(
                    widths.iter().all(|&w| w >= 1),
                    "every width must be at least 1, got {widths:?}"
                );
                ensure!(
                    blocks.iter().all(|&b| b >= 1),
                    "every stage needs at least one block, got {blocks:?}"
                );
                let stem_width = self.stem_width.unwrap_or(widths[0]);
                ensure!(stem_width >= 1, "stem_width must be at least 1");
                return Ok(Arch { stem_width, widths, blocks });
            }
            other => {
                bail!("preset must be one of resnet-mini, resnet18-cifar, custom; got {other:?}")
            }
        };
        for (key, given) in [
            ("stem_width", self.stem_width.is_some()),
            ("widths", self.widths.is_some()),
            ("blocks", self.blocks.is_some()),
        ] {
            ensure!(!given, "`{key}` applies only to preset custom, not {:?}", self.preset);
        }
        Ok(arch)
    }
}

/// Convolution followed by batch norm (no bias: the norm's β plays its part), then a ReLU if `relu`.
struct ConvBn {
    conv: Conv2d,
    bn: BnRelu,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        init: &Init,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        relu: bool,
    ) -> ConvBn {
        let cfg = Conv2dConfig { stride, padding: kernel / 2, groups: 1, bias: false };
        let mut conv = Conv2d::new(&init.pp(conv), cin, cout, kernel, cfg);
        // the norm's statistics are taken by the convolution while its output is in cache
        conv.want_plane_sums = true;
        ConvBn { conv, bn: BnRelu::new(&init.pp(bn), cout, relu) }
    }
    fn forward(&mut self, x: &Arc<Tensor>, train: bool) -> Tensor {
        let h = self.conv.forward_arc(x.clone(), train);
        let sums = self.conv.take_plane_sums();
        self.bn.forward_with_sums(h, train, sums)
    }
    /// As [`ConvBn::forward`], ending a residual block: `max(bn(conv(x)) + add, 0)`, the mask of
    /// the ReLU into `mask` in training (see [`BnRelu::forward_add_relu`]).
    fn forward_add_relu(
        &mut self,
        x: &Arc<Tensor>,
        train: bool,
        add: &[f32],
        mask: &mut bn::ReluMask,
    ) -> Tensor {
        let h = self.conv.forward_arc(x.clone(), train);
        let sums = self.conv.take_plane_sums();
        self.bn.forward_add_relu(h, train, sums, add, mask)
    }
    /// The norm's saved input dies as its backward ends and becomes the convolution's input
    /// gradient where the lengths match, neither allocated nor zeroed afresh (step 0.985 on
    /// the Xeon; handing the output's gradient back as the next output too gained nothing
    /// measurable, 0.995, and raised the step's peak memory by 9 %).
    fn backward(&mut self, dy: Tensor) -> Tensor {
        self.backward_then(dy, Vec::new(), |_, _| Vec::<()>::new()).0
    }
    /// As [`ConvBn::backward`], with the norm's first pass already made over `dy`
    /// ([`BnRelu::grad_sums`]; empty `sums`: made here), and `after` run on the convolution's
    /// input gradient chunk by chunk while it is in cache ([`Conv2d::backward_then`]).
    fn backward_then<T: Send>(
        &mut self,
        dy: Tensor,
        sums: Vec<(f32, f32)>,
        after: impl Fn(usize, &mut [f32]) -> Vec<T> + Sync,
    ) -> (Tensor, Vec<T>) {
        let g = self.bn.backward_with_sums(dy, sums);
        self.conv.recycle_input_grad(self.bn.take_spare());
        self.conv.backward_then(&g, after)
    }
    fn visit(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv.visit_params(f);
        self.bn.visit_params(f);
    }
    fn set_bn(&mut self, groups: usize, sync: Option<Collective>) {
        self.bn.groups = groups;
        self.bn.sync = sync;
    }
}

/// conv-BN-ReLU-conv-BN plus shortcut, then ReLU.
struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
    mask: bn::ReluMask,
    /// Planes (channels) per image of the last training forward's output.
    planes: usize,
}

/// Per plane of a block's output gradient, the first-pass sums of its second norm and of its
/// shortcut's norm (zeros without a shortcut): what [`BasicBlock::grad_pass`] returns.
type BlockSums = ((f32, f32), (f32, f32));

impl BasicBlock {
    fn new(init: &Init, cin: usize, cout: usize, stride: usize) -> BasicBlock {
        let a = ConvBn::new(init, "conv1", "bn1", cin, cout, 3, stride, true);
        let b = ConvBn::new(init, "conv2", "bn2", cout, cout, 3, 1, false);
        let shortcut = (stride != 1 || cin != cout)
            .then(|| ConvBn::new(&init.pp("shortcut"), "conv", "bn", cin, cout, 1, stride, false));
        BasicBlock { a, b, shortcut, mask: bn::ReluMask::default(), planes: 0 }
    }

    fn forward(&mut self, x: &Arc<Tensor>, train: bool) -> Tensor {
        let h = Arc::new(self.a.forward(x, train));
        let sc = self.shortcut.as_mut().map(|s| s.forward(x, train));
        let add = sc.as_ref().unwrap_or(x);
        // y = ReLU(bn2(conv2(h)) + shortcut) in the norm's pass, keeping the mask (every
        // element written there: the mask of the step before is not cleared first)
        let y = self.b.forward_add_relu(&h, train, &add.data, &mut self.mask);
        self.planes = y.shape.get(1).copied().unwrap_or(1);
        y
    }

    /// The pass over the block's output gradient that its backward needs first, on a chunk
    /// of whole images from image `first`, for the layer that makes the gradient to run on
    /// each chunk while it is in cache: `g ⊙ mask` (the block's final ReLU) written back,
    /// then the first-pass sums of the second norm and of the shortcut's norm (neither has a
    /// ReLU of its own, so both read the same masked `g`). [`BasicBlock::backward_then`] takes
    /// the masked gradient and these sums.
    fn grad_pass(&self) -> impl Fn(usize, &mut [f32]) -> Vec<BlockSums> + Sync + '_ {
        let second = self.b.bn.grad_sums();
        let shortcut = self.shortcut.as_ref().map(|s| s.bn.grad_sums());
        move |first, g| {
            self.mask.apply(first * self.planes, g);
            let sums = second(first, g);
            match &shortcut {
                Some(f) => sums.into_iter().zip(f(first, g)).collect(),
                None => sums.into_iter().map(|s| (s, (0.0, 0.0))).collect(),
            }
        }
    }

    /// The residual by hand: d/dx of `main(x) + shortcut(x)` is the sum of both paths'
    /// gradients. `g` is the block's output gradient already masked by [`BasicBlock::grad_pass`],
    /// whose `sums` come with it. Each pass over a gradient that a convolution has just
    /// written runs on its chunks while they are in cache: the first norm's masked sums on the
    /// second convolution's dX, the shortcut's gradient added to the first convolution's dX,
    /// then `after` (the layer before's pass) on the sum, whose results it returns. Both norms
    /// that read `g` write their input gradients over their saved inputs, so `g` is not copied.
    fn backward_then<T: Send>(
        &mut self,
        g: Tensor,
        sums: Vec<BlockSums>,
        after: impl Fn(usize, &mut [f32]) -> Vec<T> + Sync,
    ) -> (Tensor, Vec<T>) {
        assert_eq!(g.len(), self.mask.len(), "basic block backward: gradient length");
        let (second, beside): (Vec<_>, Vec<_>) = sums.into_iter().unzip();
        // the shortcut's output gradient (its norm's input gradient) first
        let d_shortcut = self.shortcut.as_mut().map(|s| s.bn.backward_beside(&g, beside));
        let d2 = self.b.bn.backward_beside(&g, second);
        let identity = match d_shortcut {
            Some(_) => {
                // g is dead: the second convolution's dX takes its buffer
                self.b.conv.recycle_input_grad(g.data);
                None
            }
            None => Some(g),
        };
        let (dh, sums) = self.b.conv.backward_then(&d2, self.a.bn.grad_sums());
        // the shortcut's input gradient is added onto the first convolution's dX chunk by
        // chunk: the identity's g, or the projection's own product (no dX buffer of its own)
        let projection = match (&self.shortcut, &d_shortcut) {
            (Some(s), Some(d)) => Some(s.conv.input_grad_adder(d)),
            _ => None,
        };
        let out = self.a.backward_then(dh, sums, |first, dx| {
            match (&identity, &projection) {
                (Some(g), _) => {
                    let at = &g.data[first * (g.len() / g.shape[0])..];
                    dx.iter_mut().zip(at).for_each(|(a, b)| *a += b);
                }
                (None, Some(add)) => add(first, dx),
                (None, None) => unreachable!("a block without an identity has a shortcut"),
            }
            after(first, dx)
        });
        drop(projection);
        if let (Some(s), Some(d)) = (&mut self.shortcut, &d_shortcut) {
            s.conv.backward_weights(d);
        }
        out
    }

    fn visit(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.a.visit(f);
        self.b.visit(f);
        if let Some(s) = &mut self.shortcut {
            s.visit(f);
        }
    }

    fn set_bn(&mut self, groups: usize, sync: Option<Collective>) {
        self.a.set_bn(groups, sync);
        self.b.set_bn(groups, sync);
        if let Some(s) = &mut self.shortcut {
            s.set_bn(groups, sync);
        }
    }
}

/// The `resnet` encoder.
pub struct ResNet {
    cfg: Config,
    arch: Arch,
    stem: ConvBn,
    pool: Option<MaxPool2d>,
    blocks: Vec<BasicBlock>,
    gap: GlobalAvgPool,
    threads: Option<rayon::ThreadPool>,
    /// Batch size of the training forward waiting for its backward.
    pending: Option<usize>,
    /// The network on the host's GPU, once bound.
    gpu: Option<cuda::OnGpu>,
}

/// The CPU layers as one [`Module`] (the parameters in their order), for the device copies.
struct CpuLayers<'a> {
    stem: &'a mut ConvBn,
    blocks: &'a mut [BasicBlock],
}

impl Module for CpuLayers<'_> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.stem.visit(f);
        for b in self.blocks.iter_mut() {
            b.visit(f);
        }
    }
}

impl ResNet {
    fn cpu_layers(&mut self) -> (Option<&mut cuda::OnGpu>, CpuLayers<'_>) {
        (self.gpu.as_mut(), CpuLayers { stem: &mut self.stem, blocks: &mut self.blocks })
    }

    /// The resolved architecture.
    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    fn check_channels(&self, c: usize) -> anyhow::Result<()> {
        ensure!(
            c == self.cfg.in_channels,
            "resnet was configured for in_channels = {} but the images have {c} channels (set in_channels in the encoder config)",
            self.cfg.in_channels
        );
        Ok(())
    }

    fn run<T: Send>(&mut self, f: impl FnOnce(&mut Self) -> T + Send) -> T {
        match self.threads.take() {
            Some(pool) => {
                let out = pool.install(|| f(self));
                self.threads = Some(pool);
                out
            }
            None => f(self),
        }
    }

    fn forward_inner(&mut self, x: Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward(&Arc::new(x), train);
        if let Some(p) = &mut self.pool {
            h = p.forward(&h, train);
        }
        for b in &mut self.blocks {
            h = b.forward(&Arc::new(h), train);
        }
        self.gap.forward(&h, train)
    }

    fn backward_inner(&mut self, dy: &Tensor) -> Tensor {
        let mut g = self.gap.backward(dy);
        let Some(last) = self.blocks.last() else {
            return self.stem.backward(g);
        };
        // the last block's pass over its output gradient on its own; each block before gets
        // its pass made on the chunks of the next block's input gradient
        let pass = last.grad_pass();
        let image = g.len() / g.shape[0];
        let mut sums: Vec<BlockSums> = if g.len() >= 1 << 15 {
            g.data.par_chunks_mut(image).enumerate().flat_map_iter(|(i, c)| pass(i, c)).collect()
        } else {
            g.data.chunks_mut(image).enumerate().flat_map(|(i, c)| pass(i, c)).collect()
        };
        drop(pass);
        for i in (1..self.blocks.len()).rev() {
            let (before, from) = self.blocks.split_at_mut(i);
            (g, sums) = from[0].backward_then(g, sums, before[i - 1].grad_pass());
        }
        let first = &mut self.blocks[0];
        match &mut self.pool {
            Some(p) => {
                g = first.backward_then(g, sums, |_, _| Vec::<()>::new()).0;
                g = p.backward(&g);
                self.stem.backward(g)
            }
            None => {
                // the stem's norm's first pass on the first block's input gradient, in cache
                let (g, sums) = first.backward_then(g, sums, self.stem.bn.grad_sums());
                self.stem.backward_then(g, sums, |_, _| Vec::<()>::new()).0
            }
        }
    }
}

impl Plugin for ResNet {
    type Config = Config;
    const NAME: &'static str = "resnet";
    const DESCRIPTION: &'static str =
        "ResNet of BasicBlocks (presets resnet-mini, resnet18-cifar, or custom widths and blocks)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        let arch = cfg.arch()?;
        let init = Init::new(ctx.seed);
        let mut stem = ConvBn::new(
            &init.pp("stem"),
            "conv",
            "bn",
            cfg.in_channels,
            arch.stem_width,
            3,
            1,
            true,
        );
        // synchronised batch norm: statistics over every rank's slice of a data-parallel batch
        let sync = if cfg.sync_batch_norm { ctx.collective.into_option() } else { None };
        stem.set_bn(cfg.bn_groups, sync);
        // the images' gradient is never read: the stem's backward computes its weights' only
        stem.conv.input_grad = false;
        let pool = cfg.stem_pool.then(|| MaxPool2d::new(3, 2, 1));
        let mut blocks = Vec::new();
        let mut cin = arch.stem_width;
        for (i, (&w, &nb)) in arch.widths.iter().zip(&arch.blocks).enumerate() {
            for j in 0..nb {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    &init.pp(format!("stage{}.{j}", i + 1)),
                    cin,
                    w,
                    stride,
                ));
                blocks.last_mut().expect("just pushed").set_bn(cfg.bn_groups, sync);
                cin = w;
            }
        }
        let threads = match ctx.threads {
            0 => None,
            t => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t as usize)
                    .build()
                    .context("starting the resnet's worker threads")?,
            ),
        };
        Ok(ResNet {
            cfg,
            arch,
            stem,
            pool,
            blocks,
            gap: GlobalAvgPool::new(),
            threads,
            pending: None,
            gpu: None,
        })
    }
}

impl Module for ResNet {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.stem.visit(f);
        for b in &mut self.blocks {
            b.visit(f);
        }
    }
}

impl EncoderPlugin for ResNet {
    fn out_dim(&mut self, [c, h, w]: [usize; 3]) -> anyhow::Result<usize> {
        self.check_channels(c)?;
        ensure!(h >= 1 && w >= 1, "images must be at least 1x1, got {h}x{w}");
        Ok(*self.arch.widths.last().expect("at least one stage"))
    }

    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor> {
        ensure!(self.gpu.is_none(), "resnet is bound to a GPU: use forward_device");
        let (n, c, h, w) = images.dims4("images")?;
        self.check_channels(c)?;
        ensure!(h >= 1 && w >= 1, "images must be at least 1x1, got {h}x{w}");
        ensure!(
            !train || n >= 2,
            "training a batch-norm network needs at least 2 images per batch, got {n}"
        );
        let g = self.cfg.bn_groups;
        ensure!(
            !train || (n % g == 0 && n / g >= 2),
            "bn_groups = {g} takes batch-norm statistics per slice of the batch, but {n} images do not split into {g} slices of at least 2"
        );
        let y = self.run(|s| s.forward_inner(images, train));
        self.pending = train.then_some(n);
        Ok(y)
    }

    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        let n = self.pending.context("backward without a training forward before it")?;
        let d = *self.arch.widths.last().expect("at least one stage");
        let (gn, gd) = grad.dims2("feature gradient")?;
        ensure!(
            (gn, gd) == (n, d),
            "feature gradient has shape [{gn}, {gd}], the last training forward gave [{n}, {d}]"
        );
        self.pending = None;
        self.run(|s| drop(s.backward_inner(&grad)));
        Ok(())
    }

    fn bind_device(&mut self, binding: DeviceBinding) -> anyhow::Result<bool> {
        ensure!(
            !self.cfg.stem_pool,
            "stem_pool = true does not run on a GPU yet: set device = \"cpu\", or stem_pool = false"
        );
        ensure!(
            !self.cfg.sync_batch_norm,
            "sync_batch_norm does not run on a GPU yet: set device = \"cpu\""
        );
        let (arch, c_in, groups) = (self.arch.clone(), self.cfg.in_channels, self.cfg.bn_groups);
        let (_, mut layers) = self.cpu_layers();
        let on = cuda::OnGpu::new(&binding, &mut layers, &arch, c_in, groups)?;
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
        match self.cpu_layers() {
            (Some(g), mut layers) => g.values_to_host(&mut layers),
            _ => Ok(()),
        }
    }

    fn params_to_device(&mut self) -> anyhow::Result<()> {
        match self.cpu_layers() {
            (Some(g), mut layers) => g.values_to_device(&mut layers),
            _ => Ok(()),
        }
    }

    fn device_params(&mut self) -> anyhow::Result<Vec<DeviceParam>> {
        Ok(self.gpu.as_ref().map(|g| g.device_params()).unwrap_or_default())
    }

    fn grads_to_host(&mut self) -> anyhow::Result<()> {
        match self.cpu_layers() {
            (Some(g), mut layers) => g.grads_to_host(&mut layers),
            _ => Ok(()),
        }
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [ResNet], augmentations: []);
