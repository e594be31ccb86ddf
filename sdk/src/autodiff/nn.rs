//! Layers on the tape, with named parameters: [`Linear`], [`BatchNorm1d`], [`Activation`], and
//! [`Head`], the one projection/prediction head every objective builds from a list of
//! [`Block`]s (lightly's `ProjectionHead`, `models/modules/heads.py`).
//!
//! Parameter names follow PyTorch's `nn.Sequential` indices, so a state dict maps one to one:
//! each block contributes a Linear, then its batch-norm and activation if any, each taking the
//! next index (SimCLR's head: `projector.0.weight`, `projector.1.{weight,bias,running_mean,
//! running_var}`, `projector.3.{weight,bias}`). Initialisation is PyTorch's default.

use super::{Graph, Var};
use crate::abi::ParamRole;
use crate::kit::{Init, Module, Param};
use serde::{Deserialize, Serialize};

/// `y = x · Wᵀ + b`, W `[out, in]` (PyTorch's layout and initialisation).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Option<Param>,
}

impl Linear {
    /// `in_dim → out_dim`, parameters `<prefix>.weight` and `<prefix>.bias`.
    pub fn new(init: &Init, in_dim: usize, out_dim: usize, bias: bool) -> Linear {
        let weight = init.kaiming_uniform("weight", vec![out_dim, in_dim], in_dim);
        let bias = bias.then(|| {
            let mut b = init.kaiming_uniform("bias", vec![out_dim], in_dim);
            b.role = ParamRole::NoDecay;
            b
        });
        Linear { weight, bias }
    }

    /// `(in, out)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.weight.shape[1], self.weight.shape[0])
    }

    /// `x [N, in] → [N, out]`.
    pub fn forward(&self, g: &Graph, x: &Var) -> Var {
        let y = x.matmul_t(&g.param(&self.weight));
        match &self.bias {
            Some(b) => y + g.param(b),
            None => y,
        }
    }
}

impl Module for Linear {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

/// Batch normalisation over the rows of `[N, C]`, as PyTorch's `BatchNorm1d`.
///
/// ```text
/// train: y = γ · (x − μ) / sqrt(σ² + ε) + β        μ, σ² = batch mean, biased variance
///        running_mean ← (1 − m)·running_mean + m·μ,  running_var ← (1 − m)·running_var + m·σ²·N/(N−1)
/// eval:  the same with the running statistics
/// ```
/// Defaults ε = 1e-5, m = 0.1, γ = 1, β = 0. Without `affine` (PyTorch's `affine=False`) there
/// is no γ or β: `y` is the normalised `x`, and only the running statistics are parameters.
#[derive(Clone, Debug)]
pub struct BatchNorm1d {
    /// γ `[C]`.
    pub weight: Param,
    /// β `[C]`.
    pub bias: Param,
    /// Running mean `[C]` (buffer).
    pub running_mean: Param,
    /// Running unbiased variance `[C]` (buffer).
    pub running_var: Param,
    /// ε.
    pub eps: f32,
    /// Running-average momentum.
    pub momentum: f32,
    /// Learnable γ and β (true: PyTorch's default).
    pub affine: bool,
}

impl BatchNorm1d {
    /// `channels` features, PyTorch's defaults.
    pub fn new(init: &Init, channels: usize) -> BatchNorm1d {
        // the kit's parameters (names, roles, defaults), on the tape here
        let k = crate::kit::BatchNorm::new(init, channels);
        BatchNorm1d {
            weight: k.weight,
            bias: k.bias,
            running_mean: k.running_mean,
            running_var: k.running_var,
            eps: k.eps,
            momentum: k.momentum,
            affine: true,
        }
    }

    /// Without γ and β (PyTorch's `BatchNorm1d(C, affine=False)`).
    pub fn without_affine(mut self) -> BatchNorm1d {
        self.affine = false;
        self
    }

    /// Normalises `x [N, C]`; in training (the graph's mode) updates the running statistics.
    pub fn forward(&mut self, g: &Graph, x: &Var) -> Var {
        let c = self.weight.value.len();
        if x.cols() != c {
            super::fail(format!("batch-norm of {c} features got a {:?} input", x.dims()));
        }
        let y = if g.train() {
            let n = x.rows();
            if n < 2 {
                super::fail(format!(
                    "batch-norm in training needs at least 2 rows, got {:?}",
                    x.dims()
                ));
            }
            // one fused op, γ and β inside
            let params = self.affine.then(|| (g.param(&self.weight), g.param(&self.bias)));
            let (y, vals, vars) = x.batch_norm_cols(params.as_ref().map(|(a, b)| (a, b)), self.eps);
            let m = self.momentum;
            let unbias = n as f32 / (n - 1) as f32;
            for k in 0..c {
                self.running_mean.value[k] = (1.0 - m) * self.running_mean.value[k] + m * vals[k];
                self.running_var.value[k] =
                    (1.0 - m) * self.running_var.value[k] + m * vars[k] * unbias;
            }
            return y;
        } else {
            let rm = g.param(&self.running_mean);
            let rv = g.param(&self.running_var);
            (x - rm) / (rv + self.eps).sqrt()
        };
        if self.affine {
            y * g.param(&self.weight) + g.param(&self.bias)
        } else {
            y
        }
    }
}

impl Module for BatchNorm1d {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if self.affine {
            f(&mut self.weight);
            f(&mut self.bias);
        }
        f(&mut self.running_mean);
        f(&mut self.running_var);
    }
}

/// A 2-d convolution without bias on images `[N, C·H·W]`, with the kit's im2col + gemm
/// kernels as one custom op ([`super::ops::conv2d`]). Weight `<prefix>.weight`
/// `[O, C/groups, kh, kw]`, initialised as PyTorch's `nn.Conv2d`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `[O, C/groups, kh, kw]`.
    pub weight: Param,
    /// Step between output positions.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
}

impl Conv2d {
    /// `in_ch → out_ch` with a `kernel`×`kernel` window.
    pub fn new(
        init: &Init,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2d {
        let weight = init.kaiming_uniform(
            "weight",
            vec![out_ch, in_ch, kernel, kernel],
            in_ch * kernel * kernel,
        );
        Conv2d { weight, stride, padding, groups: 1 }
    }

    /// `x` `[N, C·H·W]` with `chw` to `[N, O·H'·W']` and `[O, H', W']`.
    pub fn forward(&self, g: &Graph, x: &Var, chw: [usize; 3]) -> (Var, [usize; 3]) {
        let k = [self.weight.shape[2], self.weight.shape[3]];
        super::ops::conv2d(
            x,
            chw,
            &g.param(&self.weight),
            k,
            self.stride,
            self.padding,
            self.groups,
        )
    }
}

impl Module for Conv2d {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
    }
}

/// BatchNorm2d on images `[N, C·H·W]` with the kit's kernel as one custom op
/// ([`super::ops::batch_norm2d`]); parameters and defaults as [`BatchNorm1d`].
#[derive(Clone, Debug)]
pub struct BatchNorm2d(pub BatchNorm1d);

impl BatchNorm2d {
    /// `channels` channels, PyTorch's defaults.
    pub fn new(init: &Init, channels: usize) -> BatchNorm2d {
        BatchNorm2d(BatchNorm1d::new(init, channels))
    }

    /// Normalises each channel of `x` (shape `chw`); updates the running statistics in training.
    pub fn forward(&mut self, g: &Graph, x: &Var, chw: [usize; 3]) -> Var {
        let b = &mut self.0;
        let (gamma, beta) = (g.param(&b.weight), g.param(&b.bias));
        super::ops::batch_norm2d(
            x,
            chw,
            &gamma,
            &beta,
            [&mut b.running_mean, &mut b.running_var],
            b.eps,
            b.momentum,
        )
    }
}

impl Module for BatchNorm2d {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.0.visit_params(f)
    }
}

/// The EMA copy of `p` under another head name: `<prefix>.<name without its first part>`
/// (`projector.0.weight` → `target_projector.0.weight`), following `p` (see [`Param::target_copy`]).
fn target_named(p: &Param, prefix: &str) -> Param {
    let leaf = p.name.split_once('.').map(|(_, rest)| rest).unwrap_or(&p.name);
    p.target_copy(format!("{prefix}.{leaf}"))
}

/// A non-linearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// None (identity).
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// GELU (erf form).
    Gelu,
}

impl Activation {
    /// Applies it.
    pub fn apply(self, x: &Var) -> Var {
        match self {
            Activation::None => x.clone(),
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu(),
        }
    }
}

/// One block of a [`Head`]: `in → out`, then batch-norm and an activation if asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Input features.
    pub input: usize,
    /// Output features.
    pub output: usize,
    /// BatchNorm1d after the Linear.
    pub batch_norm: bool,
    /// Activation last.
    pub activation: Activation,
    /// A bias on the Linear (usually off when batch-norm follows).
    pub bias: bool,
    /// The batch-norm has γ and β (true unless [`Block::without_affine`]).
    pub affine: bool,
}

impl Block {
    /// A block.
    pub fn new(
        input: usize,
        output: usize,
        batch_norm: bool,
        activation: Activation,
        bias: bool,
    ) -> Block {
        Block { input, output, batch_norm, activation, bias, affine: true }
    }

    /// Its batch-norm without γ and β (SimSiam's last projector layer).
    pub fn without_affine(mut self) -> Block {
        self.affine = false;
        self
    }
}

struct Layer {
    linear: Linear,
    bn: Option<BatchNorm1d>,
    act: Activation,
}

/// A projection or prediction head: blocks of Linear → BatchNorm1d? → activation?.
pub struct Head {
    layers: Vec<Layer>,
}

impl Head {
    /// A head from blocks, parameters named under `init`'s prefix by `nn.Sequential` index.
    pub fn new(init: &Init, blocks: &[Block]) -> Head {
        let mut i = 0;
        let mut layers = Vec::new();
        for b in blocks {
            let linear = Linear::new(&init.pp(i.to_string()), b.input, b.output, b.bias);
            i += 1;
            let bn = b.batch_norm.then(|| {
                i += 1;
                let bn = BatchNorm1d::new(&init.pp((i - 1).to_string()), b.output);
                if b.affine {
                    bn
                } else {
                    bn.without_affine()
                }
            });
            if b.activation != Activation::None {
                i += 1;
            }
            layers.push(Layer { linear, bn, act: b.activation });
        }
        Head { layers }
    }

    /// SimCLR's `g` (v1, section 2.1): `in → hidden` (BN, ReLU, no bias), `hidden → out` (bias).
    pub fn simclr(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::new(
            init,
            &[
                Block::new(input, hidden, true, Activation::Relu, false),
                Block::new(hidden, output, false, Activation::None, true),
            ],
        )
    }

    /// BYOL's projector and predictor (section 3.3): the same two blocks as [`Head::simclr`].
    pub fn byol(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::simclr(init, input, hidden, output)
    }

    /// Barlow Twins' projector (section 4): two `→ hidden` blocks with BN and ReLU, then
    /// `→ out`; no biases (as lightly's `BarlowTwinsProjectionHead`).
    pub fn barlow_twins(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::new(
            init,
            &[
                Block::new(input, hidden, true, Activation::Relu, false),
                Block::new(hidden, hidden, true, Activation::Relu, false),
                Block::new(hidden, output, false, Activation::None, false),
            ],
        )
    }

    /// SimSiam's projector (section 3, lightly's `SimSiamProjectionHead`): two `→ hidden`
    /// blocks with BN and ReLU, then `→ out` with a batch-norm without γ and β; no biases.
    pub fn simsiam_projector(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::new(
            init,
            &[
                Block::new(input, hidden, true, Activation::Relu, false),
                Block::new(hidden, hidden, true, Activation::Relu, false),
                Block::new(hidden, output, true, Activation::None, false).without_affine(),
            ],
        )
    }

    /// SimSiam's predictor (lightly's `SimSiamPredictionHead`): `in → hidden` (BN, ReLU, no
    /// bias), `hidden → out` (bias). The same blocks as [`Head::simclr`].
    pub fn simsiam_predictor(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::simclr(init, input, hidden, output)
    }

    /// VICReg's expander (section 4.2, lightly's `VICRegProjectionHead` with 3 layers): two
    /// `→ hidden` blocks with BN and ReLU, then `→ out` with a bias.
    pub fn vicreg(init: &Init, input: usize, hidden: usize, output: usize) -> Head {
        Head::new(
            init,
            &[
                Block::new(input, hidden, true, Activation::Relu, false),
                Block::new(hidden, hidden, true, Activation::Relu, false),
                Block::new(hidden, output, false, Activation::None, true),
            ],
        )
    }

    /// `(input, output)` features.
    pub fn dims(&self) -> (usize, usize) {
        (
            self.layers.first().map_or(0, |l| l.linear.dims().0),
            self.layers.last().map_or(0, |l| l.linear.dims().1),
        )
    }

    /// The head on `x [N, input]`.
    pub fn forward(&mut self, g: &Graph, x: &Var) -> Var {
        let mut h = x.clone();
        for l in &mut self.layers {
            h = l.linear.forward(g, &h);
            if let Some(bn) = &mut l.bn {
                h = bn.forward(g, &h);
            }
            h = l.act.apply(&h);
        }
        h
    }

    /// The EMA target of this head: each trained parameter becomes a role-`Target` copy named
    /// `<prefix>.<index>.<leaf>` following the online name (`ema_of`); batch-norm running
    /// statistics become the target's own buffers, moved by the target's own forward.
    pub fn target_copy(&self, prefix: &str) -> Head {
        let rename = |p: &Param| target_named(p, prefix);
        let layers = self
            .layers
            .iter()
            .map(|l| Layer {
                linear: Linear {
                    weight: rename(&l.linear.weight),
                    bias: l.linear.bias.as_ref().map(rename),
                },
                bn: l.bn.as_ref().map(|b| BatchNorm1d {
                    weight: rename(&b.weight),
                    bias: rename(&b.bias),
                    running_mean: rename(&b.running_mean),
                    running_var: rename(&b.running_var),
                    eps: b.eps,
                    momentum: b.momentum,
                    affine: b.affine,
                }),
                act: l.act,
            })
            .collect();
        Head { layers }
    }
}

impl Module for Head {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for l in &mut self.layers {
            l.linear.visit_params(f);
            if let Some(bn) = &mut l.bn {
                bn.visit_params(f);
            }
        }
    }
}

/// A weight-normalised Linear without bias, `y = x · (g ⊙ v / ‖v‖)ᵀ` with one norm per output
/// row (`torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))`, dim 0): parameters
/// `<prefix>.weight_g [out, 1]` and `<prefix>.weight_v [out, in]`, PyTorch's names.
///
/// With `train_g = false` the length `g` is fixed (DINO's `norm_last_layer`: a buffer of ones)
/// and each output is a cosine between `x` and a prototype, times `g`.
#[derive(Clone, Debug)]
pub struct WeightNormLinear {
    /// `[out, 1]`, role `NoDecay` when trained, `Buffer` when fixed.
    pub weight_g: Param,
    /// `[out, in]`.
    pub weight_v: Param,
}

impl WeightNormLinear {
    /// `in_dim → out_dim`; `v` as PyTorch's default Linear init, `g = 1` (as lightly and the
    /// DINO reference set it, instead of weight_norm's `g = ‖v‖`).
    pub fn new(init: &Init, in_dim: usize, out_dim: usize, train_g: bool) -> WeightNormLinear {
        let weight_v = init.kaiming_uniform("weight_v", vec![out_dim, in_dim], in_dim);
        let role = if train_g { ParamRole::NoDecay } else { ParamRole::Buffer };
        let weight_g = init.constant("weight_g", vec![out_dim, 1], 1.0, role);
        WeightNormLinear { weight_g, weight_v }
    }

    /// `x [N, in] → [N, out]`.
    pub fn forward(&self, g: &Graph, x: &Var) -> Var {
        let w = g.param(&self.weight_v).l2_normalize().mul(&g.param(&self.weight_g));
        x.matmul_t(&w)
    }
}

impl Module for WeightNormLinear {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight_g);
        f(&mut self.weight_v);
    }
}

/// DINO's head (Caron et al. 2021, section 3.1; lightly's `DINOProjectionHead`): an MLP
/// `in → hidden → hidden → bottleneck` with GELU (and batch-norm if asked), L2-normalised,
/// then a weight-normalised `bottleneck → K` layer without bias.
///
/// Parameter names follow lightly's module, under the init's prefix: `layers.0.weight`,
/// `layers.0.bias`, ... (one index per Linear, BatchNorm1d and GELU, as `nn.Sequential`), then
/// `last_layer.weight_g` and `last_layer.weight_v`. Linear weights start truncated-normal
/// (σ 0.02, cut at ±2) with zero biases; the Linears have a bias unless a batch-norm follows.
pub struct DinoHead {
    /// The MLP.
    pub mlp: Head,
    /// The weight-normalised prototypes.
    pub last_layer: WeightNormLinear,
}

impl DinoHead {
    /// A head; `norm_last_layer` fixes `last_layer.weight_g` at 1 (the DINO default).
    pub fn new(
        init: &Init,
        input: usize,
        hidden: usize,
        bottleneck: usize,
        output: usize,
        batch_norm: bool,
        norm_last_layer: bool,
    ) -> DinoHead {
        let layers = init.pp("layers");
        let mut mlp = Head::new(
            &layers,
            &[
                Block::new(input, hidden, batch_norm, Activation::Gelu, !batch_norm),
                Block::new(hidden, hidden, batch_norm, Activation::Gelu, !batch_norm),
                Block::new(hidden, bottleneck, false, Activation::None, true),
            ],
        );
        for l in &mut mlp.layers {
            let w = &mut l.linear.weight;
            w.value = layers.trunc_normal("weight", w.shape.clone(), 0.02, -2.0, 2.0).value;
            if let Some(b) = &mut l.linear.bias {
                b.value.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        let last_layer =
            WeightNormLinear::new(&init.pp("last_layer"), bottleneck, output, !norm_last_layer);
        DinoHead { mlp, last_layer }
    }

    /// `(input, K)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.mlp.dims().0, self.last_layer.weight_v.shape[0])
    }

    /// Logits `[N, K]` of `x [N, input]`.
    pub fn forward(&mut self, g: &Graph, x: &Var) -> Var {
        let z = self.mlp.forward(g, x).l2_normalize();
        self.last_layer.forward(g, &z)
    }

    /// The EMA target (DINO's teacher head): role-`Target` copies named `<prefix>.<leaf>`.
    pub fn target_copy(&self, prefix: &str) -> DinoHead {
        let rename = |p: &Param| target_named(p, prefix);
        let last = &self.last_layer;
        DinoHead {
            mlp: self.mlp.target_copy(prefix),
            last_layer: WeightNormLinear {
                weight_g: rename(&last.weight_g),
                weight_v: rename(&last.weight_v),
            },
        }
    }
}

impl Module for DinoHead {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.mlp.visit_params(f);
        self.last_layer.visit_params(f);
    }
}
