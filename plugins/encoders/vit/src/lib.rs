//! ViT encoder plugin `vit`: a Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929) as
//! DINO trains it (Caron et al. 2021), written as its forward pass on the SDK's autodiff tape.
//!
//! ```text
//! image [C, H, W] → patches of p × p → Linear(C·p·p → D) (timm's patch_embed.proj conv)
//! tokens: [cls; patches] + position embeddings               [1 + T, D], T = (H/p)·(W/p)
//! block × depth (pre-norm):  x += DropPath(Attention(LayerNorm(x)))
//!                            x += DropPath(MLP(LayerNorm(x)))    MLP: Linear → GELU → Linear
//!                            (each DropPath with its own mask)
//! LayerNorm, then the class token                              [D]
//! ```
//! Parameters are named and shaped as timm's `VisionTransformer` (`cls_token` `[1, 1, D]`,
//! `pos_embed` `[1, 1 + T, D]`, `patch_embed.proj.weight` `[D, C, p, p]`,
//! `blocks.0.attn.qkv.weight` `[3D, D]`, `blocks.0.mlp.fc1.weight`, `norm.weight`, ...), so a
//! checkpoint loads into timm by name; `tests/fixtures/vit.py` builds the same network in
//! PyTorch and the tests compare the outputs.
//!
//! The image size is known when the host calls `out_dim` (the global views' size): the
//! position embeddings are made for that grid. Images of another size (multi-crop's local
//! views) get the embeddings interpolated bilinearly to their grid (DINO's
//! `interpolate_pos_encoding` uses bicubic; solo-learn #154 is the trap of forgetting it).
//!
//! Drop-path (stochastic depth) drops each residual branch of block i for whole images with
//! probability `drop_path · i / (depth − 1)` (timm's `linspace(0, drop_path, depth)`; 0 for a
//! single block), each branch with its own mask, drawn from the images' own values: the same
//! images give the same masks, so a second forward of the same batch (multi-crop's) gives the
//! same features. Only in training; the host builds the EMA target without it (DINO's teacher
//! has no drop-path).
//!
//! # Config (JSON; unknown keys refused)
//! | key | default | meaning |
//! |---|---|---|
//! | `preset` | `"vit-mini"` | `"vit-mini"` (dim 64, depth 4, 4 heads: minutes on 2 cores), `"vit-tiny"` (dim 192, depth 12, 3 heads: timm's `vit_tiny`), or `"custom"` |
//! | `in_channels` | 1 | image channels (the host fills it from the data) |
//! | `patch_size` | 4 | p; the image sides must divide by it (4 for 28 and 32 pixels) |
//! | `dim`, `depth`, `heads` | — | preset `custom` only |
//! | `mlp_ratio` | 4.0 | MLP hidden size / dim |
//! | `drop_path` | 0.0 | the last block's drop-path rate (DINO: 0.1) |

use latent_sdk::autodiff::attention;
use latent_sdk::autodiff::nn::Linear;
use latent_sdk::prelude::*;

/// The `vit` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `vit-mini`, `vit-tiny` or `custom`.
    pub preset: String,
    /// Image channels.
    pub in_channels: usize,
    /// Patch side p.
    pub patch_size: usize,
    /// Token width D (custom only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Blocks (custom only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Attention heads (custom only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// MLP hidden size over D.
    pub mlp_ratio: f32,
    /// Drop-path rate of the last block.
    pub drop_path: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            preset: "vit-mini".into(),
            in_channels: 1,
            patch_size: 4,
            dim: None,
            depth: None,
            heads: None,
            mlp_ratio: 4.0,
            drop_path: 0.0,
        }
    }
}

/// Width, depth, heads and MLP hidden size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arch {
    /// D.
    pub dim: usize,
    /// Blocks.
    pub depth: usize,
    /// Heads (D divides by them).
    pub heads: usize,
    /// MLP hidden size.
    pub hidden: usize,
}

impl Config {
    /// The architecture this config names, or an error naming the key.
    pub fn arch(&self) -> anyhow::Result<Arch> {
        ensure!(self.in_channels >= 1, "in_channels must be at least 1");
        ensure!(self.patch_size >= 1, "patch_size must be at least 1");
        ensure!(
            self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite(),
            "mlp_ratio must be > 0, got {}",
            self.mlp_ratio
        );
        ensure!(
            (0.0..1.0).contains(&self.drop_path),
            "drop_path must be in [0, 1), got {}",
            self.drop_path
        );
        let (dim, depth, heads) = match self.preset.as_str() {
            "vit-mini" | "vit-tiny" => {
                for (k, v) in [("dim", self.dim), ("depth", self.depth), ("heads", self.heads)] {
                    ensure!(
                        v.is_none(),
                        "`{k}` applies only to preset custom, not {:?}",
                        self.preset
                    );
                }
                if self.preset == "vit-mini" {
                    (64, 4, 4)
                } else {
                    (192, 12, 3)
                }
            }
            "custom" => (
                self.dim.context("preset custom needs `dim`")?,
                self.depth.context("preset custom needs `depth`")?,
                self.heads.context("preset custom needs `heads`")?,
            ),
            other => bail!("preset must be one of vit-mini, vit-tiny, custom; got {other:?}"),
        };
        ensure!(dim >= 1 && depth >= 1 && heads >= 1, "dim, depth and heads must be at least 1");
        ensure!(dim % heads == 0, "dim {dim} must divide by heads {heads}");
        let hidden = ((dim as f32 * self.mlp_ratio).round() as usize).max(1);
        Ok(Arch { dim, depth, heads, hidden })
    }
}

/// Layer norm over each row of `[N, D]` (ε 1e-6, timm's ViT), on the tape.
pub struct LayerNorm {
    /// γ `[D]`.
    pub weight: Param,
    /// β `[D]`.
    pub bias: Param,
}

impl LayerNorm {
    fn new(init: &Init, dim: usize) -> LayerNorm {
        LayerNorm {
            weight: init.constant("weight", vec![dim], 1.0, ParamRole::NoDecay),
            bias: init.constant("bias", vec![dim], 0.0, ParamRole::NoDecay),
        }
    }

    fn forward(&self, g: &Graph, x: &Var) -> Var {
        x.layer_norm_rows(&g.param(&self.weight), &g.param(&self.bias), 1e-6)
    }
}

impl Module for LayerNorm {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}

/// A Linear initialised as timm's ViT: weight trunc-normal (std 0.02), bias 0.
fn linear(init: &Init, i: usize, o: usize) -> Linear {
    let weight = init.trunc_normal("weight", vec![o, i], 0.02, -2.0, 2.0);
    let bias = Some(init.constant("bias", vec![o], 0.0, ParamRole::NoDecay));
    Linear { weight, bias }
}

/// One pre-norm transformer block.
pub struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    /// Drop-path rate of this block.
    drop: f32,
}

impl Block {
    fn new(init: &Init, a: &Arch, drop: f32) -> Block {
        Block {
            norm1: LayerNorm::new(&init.pp("norm1"), a.dim),
            qkv: linear(&init.pp("attn.qkv"), a.dim, 3 * a.dim),
            proj: linear(&init.pp("attn.proj"), a.dim, a.dim),
            norm2: LayerNorm::new(&init.pp("norm2"), a.dim),
            fc1: linear(&init.pp("mlp.fc1"), a.dim, a.hidden),
            fc2: linear(&init.pp("mlp.fc2"), a.hidden, a.dim),
            heads: a.heads,
            drop,
        }
    }

    /// `x [N·T, D]` of `n` sequences; `masks`: drop-path's per-row scales of the attention
    /// and the MLP branch, when it applies.
    fn forward(&self, g: &Graph, x: &Var, n: usize, masks: Option<&(Var, Var)>) -> Var {
        let keep = |v: Var, second: bool| match masks {
            Some((a, m)) => v * if second { m } else { a },
            None => v,
        };
        let a = attention(&self.qkv.forward(g, &self.norm1.forward(g, x)), n, self.heads);
        let x = x + &keep(self.proj.forward(g, &a), false);
        let h = self.fc1.forward(g, &self.norm2.forward(g, &x)).gelu();
        &x + &keep(self.fc2.forward(g, &h), true)
    }
}

impl Module for Block {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.norm1.visit_params(f);
        self.qkv.visit_params(f);
        self.proj.visit_params(f);
        self.norm2.visit_params(f);
        self.fc1.visit_params(f);
        self.fc2.visit_params(f);
    }
}

/// The layers, made for images of one shape.
pub struct Net {
    /// The image shape the position embeddings are for.
    pub shape: [usize; 3],
    /// `patch_embed.proj.weight` `[D, C, p, p]`.
    pub patch_w: Param,
    /// `patch_embed.proj.bias` `[D]`.
    pub patch_b: Param,
    /// `cls_token` `[1, 1, D]`.
    pub cls: Param,
    /// `pos_embed` `[1, 1 + T, D]`.
    pub pos: Param,
    /// `blocks.i`.
    pub blocks: Vec<Block>,
    /// `norm`.
    pub norm: LayerNorm,
}

/// The `vit` encoder.
pub struct Vit {
    cfg: Config,
    arch: Arch,
    seed: u64,
    /// The layers, made at `out_dim` (or the first forward).
    pub net: Option<Net>,
}

impl Vit {
    fn grid(&self, [c, h, w]: [usize; 3]) -> anyhow::Result<(usize, usize)> {
        let p = self.cfg.patch_size;
        ensure!(
            c == self.cfg.in_channels,
            "vit was configured for {} channels, got {c}",
            self.cfg.in_channels
        );
        ensure!(
            h >= p && w >= p && h % p == 0 && w % p == 0,
            "vit: images of {h}x{w} do not split into patches of {p}x{p} (patch_size must divide both sides)"
        );
        Ok((h / p, w / p))
    }

    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<()> {
        let (gh, gw) = self.grid(shape)?;
        if self.net.is_some() {
            return Ok(());
        }
        let (a, p, c) = (self.arch, self.cfg.patch_size, self.cfg.in_channels);
        let init = Init::new(self.seed);
        let pe = init.pp("patch_embed.proj");
        let mut patch_w = pe.trunc_normal("weight", vec![a.dim, c, p, p], 0.02, -2.0, 2.0);
        patch_w.role = ParamRole::Weight;
        let patch_b = pe.constant("bias", vec![a.dim], 0.0, ParamRole::NoDecay);
        let mut cls = init.trunc_normal("cls_token", vec![1, 1, a.dim], 0.02, -2.0, 2.0);
        cls.role = ParamRole::NoDecay;
        let mut pos = init.trunc_normal("pos_embed", vec![1, 1 + gh * gw, a.dim], 0.02, -2.0, 2.0);
        pos.role = ParamRole::NoDecay;
        let blocks = (0..a.depth)
            .map(|i| {
                let rate = if a.depth > 1 {
                    self.cfg.drop_path * i as f32 / (a.depth - 1) as f32
                } else {
                    0.0 // linspace(0, r, 1)
                };
                Block::new(&init.pp(format!("blocks.{i}")), &a, rate)
            })
            .collect();
        let norm = LayerNorm::new(&init.pp("norm"), a.dim);
        self.net = Some(Net { shape, patch_w, patch_b, cls, pos, blocks, norm });
        Ok(())
    }
}

/// `[N, C·H·W]` images → `[N·T, C·p·p]` patches, row-major over the grid, each patch's values
/// in (channel, row, column) order (the layout of a `[D, C, p, p]` conv weight).
pub fn patchify(x: &Var, [c, h, w]: [usize; 3], p: usize) -> Var {
    let n = x.rows();
    let (gh, gw) = (h / p, w / p);
    let (t, k) = (gh * gw, c * p * p);
    // the source index of each output value
    let mut at = Vec::with_capacity(t * k);
    for ty in 0..gh {
        for tx in 0..gw {
            for ch in 0..c {
                for ky in 0..p {
                    for kx in 0..p {
                        at.push(ch * h * w + (ty * p + ky) * w + tx * p + kx);
                    }
                }
            }
        }
    }
    let xs = x.values();
    let per = c * h * w;
    let mut out = Vec::with_capacity(n * t * k);
    for i in 0..n {
        out.extend(at.iter().map(|&j| xs[i * per + j]));
    }
    x.graph().custom(&[x], n * t, k, out, move |dy, dx| {
        for i in 0..n {
            for (o, &j) in dy[i * t * k..(i + 1) * t * k].iter().zip(&at) {
                dx[0][i * per + j] += o;
            }
        }
    })
}

/// `[N·T, D]` patch tokens, the class token `[1, D]` and position embeddings `[(1 + T)·D]`
/// (any 2-d shape of that size) → `[N·(1 + T), D]`: per image the class token then its patches,
/// each plus its position embedding.
pub fn with_cls_and_pos(tokens: &Var, cls: &Var, pos: &Var, n: usize) -> Var {
    let d = cls.len();
    let t = tokens.rows() / n;
    let (tv, cv, pv) = (tokens.values(), cls.values(), pos.values());
    let mut out = Vec::with_capacity(n * (t + 1) * d);
    for i in 0..n {
        out.extend(cv.iter().zip(&pv[..d]).map(|(a, b)| a + b));
        for j in 0..t {
            let row = &tv[(i * t + j) * d..(i * t + j + 1) * d];
            out.extend(row.iter().zip(&pv[(j + 1) * d..(j + 2) * d]).map(|(a, b)| a + b));
        }
    }
    tokens.graph().custom(&[tokens, cls, pos], n * (t + 1), d, out, move |dy, dx| {
        for i in 0..n {
            let seq = &dy[i * (t + 1) * d..(i + 1) * (t + 1) * d];
            dx[1].iter_mut().zip(&seq[..d]).for_each(|(a, b)| *a += b);
            dx[2].iter_mut().zip(seq).for_each(|(a, b)| *a += b);
            dx[0][i * t * d..(i + 1) * t * d].iter_mut().zip(&seq[d..]).for_each(|(a, b)| *a += b);
        }
    })
}

/// The first row of each of the `n` sequences of `x` `[N·T, D]`: `[N, D]`.
pub fn class_tokens(x: &Var, n: usize) -> Var {
    let (rows, d) = x.dims();
    let t = rows / n;
    let xs = x.values();
    let out: Vec<f32> = (0..n).flat_map(|i| xs[i * t * d..i * t * d + d].to_vec()).collect();
    x.graph().custom(&[x], n, d, out, move |dy, dx| {
        for i in 0..n {
            dx[0][i * t * d..i * t * d + d]
                .iter_mut()
                .zip(&dy[i * d..(i + 1) * d])
                .for_each(|(a, b)| *a += b);
        }
    })
}

/// The bilinear interpolation (half-pixel centres, as PyTorch's `align_corners=False`) from a
/// `gh × gw` grid to a `th × tw` one, as a `[th·tw, gh·gw]` matrix.
pub fn bilinear(gh: usize, gw: usize, th: usize, tw: usize) -> Vec<f32> {
    let axis = |g: usize, t: usize| -> Vec<(usize, usize, f32)> {
        (0..t)
            .map(|i| {
                let s = ((i as f32 + 0.5) * g as f32 / t as f32 - 0.5).clamp(0.0, (g - 1) as f32);
                let lo = s.floor() as usize;
                (lo, (lo + 1).min(g - 1), s - lo as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(gh, th), axis(gw, tw));
    let mut m = vec![0f32; th * tw * gh * gw];
    for (i, &(y0, y1, wy)) in ys.iter().enumerate() {
        for (j, &(x0, x1, wx)) in xs.iter().enumerate() {
            let row = &mut m[(i * tw + j) * gh * gw..(i * tw + j + 1) * gh * gw];
            row[y0 * gw + x0] += (1.0 - wy) * (1.0 - wx);
            row[y0 * gw + x1] += (1.0 - wy) * wx;
            row[y1 * gw + x0] += wy * (1.0 - wx);
            row[y1 * gw + x1] += wy * wx;
        }
    }
    m
}

/// A per-image keep mask for drop-path, `[N·T, 1]` (0, or 1 / (1 − rate) for kept images,
/// the same for the `t` rows of an image), drawn from `seed`.
pub fn drop_mask(g: &Graph, n: usize, t: usize, rate: f32, seed: u64) -> Var {
    let mut s = seed;
    let mut m = Vec::with_capacity(n * t);
    for _ in 0..n {
        // splitmix64
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
        let v = if u < rate { 0.0 } else { 1.0 / (1.0 - rate) };
        m.extend(std::iter::repeat_n(v, t));
    }
    g.from_vec(n * t, 1, m)
}

impl Plugin for Vit {
    type Config = Config;
    const NAME: &'static str = "vit";
    const DESCRIPTION: &'static str =
        "Vision Transformer (presets vit-mini, vit-tiny; timm's names; position embeddings interpolated for other sizes)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        let arch = cfg.arch()?;
        Ok(Vit { cfg, arch, seed: ctx.seed, net: None })
    }
}

impl Module for Vit {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(net) = &mut self.net {
            f(&mut net.patch_w);
            f(&mut net.patch_b);
            f(&mut net.cls);
            f(&mut net.pos);
            for b in &mut net.blocks {
                b.visit_params(f);
            }
            net.norm.visit_params(f);
        }
    }
}

impl Encoder for Vit {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.arch.dim)
    }

    fn forward(&mut self, g: &Graph, images: &Var, chw: [usize; 3]) -> anyhow::Result<Var> {
        self.build(chw)?;
        let (th, tw) = self.grid(chw)?;
        let (d, p, n) = (self.arch.dim, self.cfg.patch_size, images.rows());
        ensure!(n >= 1, "vit: a batch of no images");
        let net = self.net.as_ref().expect("built above");
        let (gh, gw) = self.grid(net.shape)?;
        let patches = patchify(images, chw, p);
        let w = g.param(&net.patch_w); // [D, C·p·p]
        let tokens = patches.matmul_t(&w) + g.param(&net.patch_b);
        let pos = g.param(&net.pos).reshape(1 + gh * gw, d);
        let pos = if (th, tw) == (gh, gw) {
            pos
        } else {
            let m = g.from_vec(th * tw, gh * gw, bilinear(gh, gw, th, tw));
            let grid = m.matmul(&pos.rows_range(1, 1 + gh * gw));
            latent_sdk::autodiff::ops::cat_rows(&[&pos.rows_range(0, 1), &grid])
        };
        let mut x = with_cls_and_pos(&tokens, &g.param(&net.cls), &pos, n);
        let t = 1 + th * tw;
        // drop-path masks from the images' own values: the same batch, the same masks
        let seed = images.values().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
        });
        for (i, b) in net.blocks.iter().enumerate() {
            let mask = |k: u64| drop_mask(g, n, t, b.drop, seed ^ k.wrapping_mul(0x9E37_79B9));
            let masks = (g.train() && b.drop > 0.0)
                .then(|| (mask(2 * i as u64 + 1), mask(2 * i as u64 + 2)));
            x = b.forward(g, &x, n, masks.as_ref());
        }
        let x = net.norm.forward(g, &x);
        Ok(class_tokens(&x, n))
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [Taped<Vit>], augmentations: []);
