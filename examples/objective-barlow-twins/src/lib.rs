//! Barlow Twins, a complete objective plugin in one file: a projector head from kit layers and
//! the redundancy-reduction loss with its hand-derived gradient.
//!
//! - \[0\] Barlow Twins: Self-Supervised Learning via Redundancy Reduction, Zbontar, Jing,
//!   Misra, LeCun, Deny, 2021, <https://arxiv.org/abs/2103.03230> (equations 1 and 2,
//!   algorithm 1)
//! - \[1\] Tsai, Bai, Morency, Salakhutdinov, A Note on Connecting Barlow Twins with
//!   Negative-Sample-Free Contrastive Learning, 2021, <https://arxiv.org/abs/2104.13712>
//!   (λ = 1/D)
//!
//! ```text
//! z^A = g(h^A), z^B = g(h^B)                         projector on each view     [N, D]
//! x̂_ni = (z_ni − μ_i) / sqrt(σ²_i + ε)               per column over the batch (batch-norm
//!                                                     without affine, biased variance)
//! C_ij = 1/N · Σ_n x̂^A_ni x̂^B_nj                     cross-correlation          [D, D]
//! L    = Σ_i (1 − C_ii)²  +  λ · Σ_i Σ_{j≠i} C_ij²   invariance + redundancy reduction
//! ```
//! With ε = 0, `C_ij` is exactly the paper's equation 2: the cosine between column `i` of the
//! centred `z^A` and column `j` of the centred `z^B`. ε = 1e-5 is what the authors' code uses
//! (`nn.BatchNorm1d(D, affine=False)`); it keeps a constant column from dividing by zero.
//! (The paper's pseudocode divides by `torch.std`, the unbiased standard deviation; that only
//! scales `C` by (N−1)/N.)
//!
//! # Gradient
//! ```text
//! G_ij   = ∂L/∂C_ij = 2 (C_ii − 1)   if i = j
//!                   = 2 λ C_ij       otherwise
//! ∂L/∂x̂^A = x̂^B · Gᵀ / N          ∂L/∂x̂^B = x̂^A · G / N
//! ∂L/∂z_ni = 1/sqrt(σ²_i + ε) · (dx̂_ni − mean_n dx̂_ni − x̂_ni · mean_n (dx̂_ni x̂_ni))
//! ```
//! (the last line is batch-norm's backward with γ = 1), then back through the projector with
//! the kit layers' own backward. The loss runs in f64.
//!
//! # Shapes
//! views `h^A`, `h^B` `[N, input_dim]` (N ≥ 2) → projector → `z` `[N, output_dim]` →
//! `C` `[output_dim, output_dim]` → loss scalar; gradients `[N, input_dim]` per view.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 512 | hidden width of the projector (the paper: 8192) |
//! | `output_dim` | 512 | D, the size of `z` (the paper: 8192) |
//! | `lambda` | 0.005 | λ, weight of the off-diagonal term (the paper's value, tuned for D = 8192) |
//! | `lambda_inv_dim` | false | use λ = 1/D instead (\[1\]; the paper's λ·D ≈ 41 is large for small D) |
//! | `eps` | 1e-5 | ε of the normalisation |
//! | `head` | true | false: the loss runs on the encoder output directly (no parameters) |
//!
//! The projector is `Linear(no bias) → BatchNorm1d → ReLU → Linear(no bias)`, as in the
//! authors' code: a bias on the last layer would be cancelled by the normalisation (its
//! gradient is exactly zero). Parameters: `projector.0.weight`, `projector.1.*`,
//! `projector.3.weight` (PyTorch's `nn.Sequential` indices).
//!
//! Metrics: `loss`, `on_diag` (Σ (1 − C_ii)²), `off_diag` (Σ_{i≠j} C_ij², before λ),
//! `mean_diag` (mean C_ii: 1 when the views agree perfectly). Exactly two views; no target
//! network (`target_momentum` is 1).

use latent_sdk::prelude::*;

/// The `barlow-twins` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub hidden_dim: usize,
    /// D, the projection size.
    pub output_dim: usize,
    /// λ, the weight of the off-diagonal (redundancy) term.
    pub lambda: f64,
    /// Use λ = 1/D instead of `lambda`.
    pub lambda_inv_dim: bool,
    /// ε of the per-column normalisation.
    pub eps: f64,
    /// Use the projector.
    pub head: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { input_dim: 128, hidden_dim: 512, output_dim: 512, lambda: 5e-3, lambda_inv_dim: false, eps: 1e-5, head: true }
    }
}

// ---------------------------------------------------------------------------------------------
// The loss

/// Barlow Twins loss value, gradients and metrics.
pub struct BarlowLoss {
    /// The loss.
    pub loss: f64,
    /// ∂L/∂z^A `[N, D]`.
    pub dza: Tensor,
    /// ∂L/∂z^B `[N, D]`.
    pub dzb: Tensor,
    /// `loss`, `on_diag`, `off_diag`, `mean_diag`.
    pub metrics: Vec<(String, f64)>,
}

/// Column-normalised `z` (`[n, d]`, row-major) in f64, with `1/sqrt(σ² + ε)` per column.
fn normalize_columns(z: &Tensor, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (z.shape[0], z.shape[1]);
    let mut mean = vec![0.0; d];
    for row in z.data.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64 / n as f64;
        }
    }
    let mut var = vec![0.0; d];
    for row in z.data.chunks(d) {
        for j in 0..d {
            var[j] += (row[j] as f64 - mean[j]).powi(2) / n as f64;
        }
    }
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let mut x = vec![0.0; n * d];
    for (r, row) in z.data.chunks(d).enumerate() {
        for j in 0..d {
            x[r * d + j] = (row[j] as f64 - mean[j]) * inv_std[j];
        }
    }
    (x, inv_std)
}

/// Backward of [`normalize_columns`]: `dz = inv_std · (dx − mean(dx) − x̂ · mean(dx · x̂))`.
fn normalize_columns_backward(x: &[f64], inv_std: &[f64], dx: &[f64], n: usize, d: usize) -> Vec<f32> {
    let (mut mdx, mut mdxx) = (vec![0.0; d], vec![0.0; d]);
    for r in 0..n {
        for j in 0..d {
            mdx[j] += dx[r * d + j] / n as f64;
            mdxx[j] += dx[r * d + j] * x[r * d + j] / n as f64;
        }
    }
    let mut dz = vec![0.0f32; n * d];
    for r in 0..n {
        for j in 0..d {
            let k = r * d + j;
            dz[k] = (inv_std[j] * (dx[k] - mdx[j] - x[k] * mdxx[j])) as f32;
        }
    }
    dz
}

/// `op(a)` `[n, p]` times `b` `[p, m]` (f64, row-major), with `op(a) = aᵀ` when `ta` (then `a`
/// is stored `[p, n]`).
fn matmul(a: &[f64], ta: bool, b: &[f64], n: usize, p: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        let row = &mut c[i * m..(i + 1) * m];
        for k in 0..p {
            let v = if ta { a[k * n + i] } else { a[i * p + k] };
            for (c, &bv) in row.iter_mut().zip(&b[k * m..(k + 1) * m]) {
                *c += v * bv;
            }
        }
    }
    c
}

/// The Barlow Twins loss of two projections `za`, `zb` `[N, D]` (N ≥ 2), with its gradient.
pub fn barlow_twins(za: &Tensor, zb: &Tensor, lambda: f64, eps: f64) -> anyhow::Result<BarlowLoss> {
    let (n, d) = za.dims2("view A projections")?;
    ensure!(zb.shape == za.shape, "the two views must have the same shape, got {:?} and {:?}", za.shape, zb.shape);
    ensure!(n >= 2, "barlow twins needs at least 2 samples per batch to normalise over, got {n}");
    ensure!(lambda >= 0.0 && eps >= 0.0, "lambda and eps must be non-negative, got {lambda} and {eps}");
    let (xa, sa) = normalize_columns(za, eps);
    let (xb, sb) = normalize_columns(zb, eps);
    // C = x̂ᴬᵀ x̂ᴮ / N                                                  [D, D]
    let mut c = matmul(&xa, true, &xb, d, n, d);
    c.iter_mut().for_each(|v| *v /= n as f64);
    let (mut on, mut off, mut diag) = (0.0, 0.0, 0.0);
    // G = ∂L/∂C                                                         [D, D]
    let mut g = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            let cij = c[i * d + j];
            if i == j {
                on += (1.0 - cij).powi(2);
                diag += cij;
                g[i * d + j] = 2.0 * (cij - 1.0);
            } else {
                off += cij * cij;
                g[i * d + j] = 2.0 * lambda * cij;
            }
        }
    }
    let loss = on + lambda * off;
    // ∂L/∂x̂ᴬ = x̂ᴮ Gᵀ / N,  ∂L/∂x̂ᴮ = x̂ᴬ G / N                            [N, D]
    let mut gt = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            gt[j * d + i] = g[i * d + j];
        }
    }
    let mut dxa = matmul(&xb, false, &gt, n, d, d);
    let mut dxb = matmul(&xa, false, &g, n, d, d);
    dxa.iter_mut().chain(dxb.iter_mut()).for_each(|v| *v /= n as f64);
    let dza = Tensor::new(vec![n, d], normalize_columns_backward(&xa, &sa, &dxa, n, d));
    let dzb = Tensor::new(vec![n, d], normalize_columns_backward(&xb, &sb, &dxb, n, d));
    let metrics = vec![
        ("loss".into(), loss),
        ("on_diag".into(), on),
        ("off_diag".into(), off),
        ("mean_diag".into(), diag / d as f64),
    ];
    Ok(BarlowLoss { loss, dza, dzb, metrics })
}

// ---------------------------------------------------------------------------------------------
// The projector

/// `Linear(no bias) → BatchNorm1d → ReLU → Linear(no bias)`.
pub struct Projector {
    /// `projector.0`: `[hidden, input]`.
    pub fc1: Linear,
    /// `projector.1`: BatchNorm1d over `hidden`.
    pub bn: BatchNorm,
    relu: Relu,
    /// `projector.3`: `[output, hidden]`.
    pub fc2: Linear,
}

impl Projector {
    /// A projector initialised as PyTorch's layers, parameters named under `init`'s prefix.
    pub fn new(init: &Init, input_dim: usize, hidden_dim: usize, output_dim: usize) -> Self {
        Projector {
            fc1: Linear::new(&init.pp("0"), input_dim, hidden_dim, false),
            bn: BatchNorm::new(&init.pp("1"), hidden_dim),
            relu: Relu::new(),
            fc2: Linear::new(&init.pp("3"), hidden_dim, output_dim, false),
        }
    }

    /// The running statistics (buffers), to restore after a forward that only rebuilds caches.
    fn buffers(&mut self) -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        self.visit_params(&mut |p| if !p.trainable() { v.push(p.value.clone()) });
        v
    }

    fn set_buffers(&mut self, saved: Vec<Vec<f32>>) {
        let mut it = saved.into_iter();
        self.visit_params(&mut |p| {
            if !p.trainable() {
                p.value = it.next().expect("one saved value per buffer");
            }
        });
    }
}

impl Module for Projector {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.fc1.visit_params(f);
        self.bn.visit_params(f);
        self.fc2.visit_params(f);
    }
}

impl Layer for Projector {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let h = self.fc1.forward(x, train);
        let h = self.bn.forward(&h, train);
        let h = self.relu.forward(&h, train);
        self.fc2.forward(&h, train)
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let g = self.fc2.backward(dy);
        let g = self.relu.backward(&g);
        let g = self.bn.backward(&g);
        self.fc1.backward(&g)
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin

/// The Barlow Twins objective.
pub struct BarlowTwins {
    cfg: Config,
    /// The projector (`None` with `head: false`).
    pub projector: Option<Projector>,
}

impl BarlowTwins {
    /// λ in use: `lambda`, or 1/D with `lambda_inv_dim`.
    pub fn lambda(&self) -> f64 {
        let d = if self.cfg.head { self.cfg.output_dim } else { self.cfg.input_dim };
        if self.cfg.lambda_inv_dim { 1.0 / d as f64 } else { self.cfg.lambda }
    }
}

impl Plugin for BarlowTwins {
    type Config = Config;
    const NAME: &'static str = "barlow-twins";
    const DESCRIPTION: &'static str = "Barlow Twins: projector + cross-correlation redundancy reduction (example)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.lambda >= 0.0 && cfg.lambda.is_finite(), "lambda must be a non-negative number, got {}", cfg.lambda);
        ensure!(cfg.eps >= 0.0 && cfg.eps.is_finite(), "eps must be a non-negative number, got {}", cfg.eps);
        ensure!(cfg.input_dim > 0, "input_dim must be positive, got {}", cfg.input_dim);
        if cfg.head {
            ensure!(cfg.hidden_dim > 0 && cfg.output_dim > 0, "hidden_dim and output_dim must be positive, got {} and {}", cfg.hidden_dim, cfg.output_dim);
        }
        let projector = cfg.head.then(|| Projector::new(&Init::new(ctx.seed).pp("projector"), cfg.input_dim, cfg.hidden_dim, cfg.output_dim));
        Ok(BarlowTwins { cfg, projector })
    }
}

impl Module for BarlowTwins {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(p) = &mut self.projector {
            p.visit_params(f);
        }
    }
}

impl ObjectivePlugin for BarlowTwins {
    fn compute(&mut self, b: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> {
        ensure!(b.views.len() == 2, "barlow-twins needs exactly 2 views, got {}", b.views.len());
        for (i, v) in b.views.iter().enumerate() {
            let (n, d) = v.dims2(&format!("view {i}"))?;
            ensure!(d == self.cfg.input_dim, "view {i} has {d} features but input_dim is {}", self.cfg.input_dim);
            ensure!(n >= 2, "barlow-twins needs at least 2 samples per batch, got {n}");
        }
        let lambda = self.lambda();
        let (ha, hb) = (&b.views[0], &b.views[1]);
        let Some(proj) = self.projector.as_mut() else {
            let r = barlow_twins(ha, hb, lambda, self.cfg.eps)?;
            let grads = if b.train { vec![r.dza, r.dzb] } else { vec![] };
            return Ok(ObjectiveResult { loss: r.loss as f32, grads, metrics: r.metrics, target_momentum: 1.0 });
        };
        // The projector runs on each view separately (batch-norm statistics per view, as the
        // authors' code). Kit layers cache only their last forward, so view B's backward runs
        // first, then view A's training forward is replayed (buffers restored: the running
        // statistics move once per view per step) before its backward.
        let za = proj.forward(ha, b.train);
        let zb = proj.forward(hb, b.train);
        let r = barlow_twins(&za, &zb, lambda, self.cfg.eps)?;
        let grads = if b.train {
            let dhb = proj.backward(&r.dzb);
            let saved = proj.buffers();
            let _ = proj.forward(ha, true);
            proj.set_buffers(saved);
            let dha = proj.backward(&r.dza);
            vec![dha, dhb]
        } else {
            vec![]
        };
        Ok(ObjectiveResult { loss: r.loss as f32, grads, metrics: r.metrics, target_momentum: 1.0 })
    }
}

latent_sdk::export_plugins!(objectives: [BarlowTwins], encoders: [], augmentations: []);

