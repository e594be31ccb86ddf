//! MoCo objective plugin, v2 and v3 as modes of one plugin: a projector and its momentum (EMA)
//! copy; v2 contrasts each query with a queue of earlier keys, v3 adds a predictor and
//! contrasts with the other view's keys in the batch.
//!
//! - \[0\] MoCo, He et al. 2020, <https://arxiv.org/abs/1911.05722>
//! - \[1\] MoCo v2, Chen, Fan, Girshick, He 2020, <https://arxiv.org/abs/2003.04297>
//! - \[2\] MoCo v3, Chen, Xie, He 2021, <https://arxiv.org/abs/2104.02057>
//!
//! ```text
//! v2 (version = "v2", the default)
//!   q = g_θ(h₀)                 query: the online encoder and projector on view 0
//!   k = g_ξ(h'₁)                key: the momentum encoder and projector on view 1 (no gradient)
//!   L = InfoNCE(q, k; queue, τ)                       (loss::info_nce)
//!   (symmetric = true: L = ½ InfoNCE(q₀, k₁) + ½ InfoNCE(q₁, k₀))
//!   queue ← the normalised keys, first in, first out (training steps only)
//! v3 (version = "v3")
//!   qᵢ = p_θ(g_θ(hᵢ))           queries: projector then predictor on both views
//!   kᵢ = g_ξ(h'ᵢ)               keys: the momentum encoder and projector (no gradient)
//!   L = ctr(q₀, k₁) + ctr(q₁, k₀),  ctr = CrossEntropy(q̂ k̂ᵀ / τ, diagonal) · 2τ   (loss::ctr)
//! ```
//! The host keeps the momentum encoder (ξ ← m ξ + (1 − m) θ); this plugin keeps the
//! momentum projector (`target_projector.*`, role `Target`). In v2 the queue is objective
//! state: the parameters `queue` `[K, D]` and `queue_ptr` `[1]` have role `Buffer`, so the
//! host saves them in every checkpoint and `--resume` restores them bit for bit. The queue
//! starts as random unit vectors (seeded). As in the paper and lightly's MoCo example the v2
//! loss is asymmetric by default: view 0 gives the queries, view 1 the keys (`symmetric`
//! adds the other direction).
//!
//! Heads. v2: the projector is MoCo v2's MLP (lightly's `MoCoProjectionHead`): Linear → ReLU →
//! Linear, with biases (`projector.0.*`, `projector.2.*`). v3: the paper's ResNet heads
//! (the official `moco-v3` `_build_mlp`): projector Linear → BN → ReLU → Linear → BN without
//! γ, β; predictor Linear → BN → ReLU → Linear; no biases (`projector.{0,1,3,4}.*`,
//! `predictor.{0,1,3}.*`).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `version` | `"v2"` | `"v2"` (queue of negatives) or `"v3"` (predictor, in-batch negatives) |
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 512 | hidden width of the projector and predictor (the papers: 2048 for v2, 4096 for v3) |
//! | `output_dim` | 128 | key and query size D (the papers: 128 for v2, 256 for v3) |
//! | `temperature` | 0.2 | τ of InfoNCE (0.2 in v2 and in the issue's v3 recipe; the v3 code's default is 1.0) |
//! | `queue_size` | 65536 (v2 only) | K, the number of queued keys (the paper's); for small data keep it below one epoch of keys, e.g. 2048 for 4,000 images, or the queue holds keys of the query's own image. Refused in v3, which has no queue |
//! | `symmetric` | false | v2: also contrast view 1's queries with view 0's keys and average the two losses; both views' keys enter the queue (solo-learn's MoCo v2+, which keeps a queue per view; here one queue takes both). Refused in v3, which is symmetric |
//! | `momentum_base` | 0.99 | m at step 0, rising to 1 on a cosine (lightly's MoCo example and MoCo v3's ResNet recipe) |
//!
//! Metrics: `loss`, `momentum`, `top1` (v2: share of queries whose key beats every queued key;
//! v3: whose own key beats the batch's other keys), `pos_cosine` (mean cos(q, k) of positives).

pub mod loss;

use latent_sdk::prelude::*;

/// MoCo settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// v2 or v3.
    pub version: Version,
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub hidden_dim: usize,
    /// Key and query size.
    pub output_dim: usize,
    /// τ.
    pub temperature: f32,
    /// K (v2 only; `None` is 65536).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<usize>,
    /// Momentum at step 0.
    pub momentum_base: f64,
    /// v2: also the queries of view 1 against the keys of view 0.
    pub symmetric: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: Version::V2,
            input_dim: 128,
            hidden_dim: 512,
            output_dim: 128,
            temperature: 0.2,
            queue_size: None,
            momentum_base: 0.99,
            symmetric: false,
        }
    }
}

/// Which MoCo.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// MoCo v2: InfoNCE against a queue of earlier keys.
    V2,
    /// MoCo v3: a predictor, and InfoNCE against the other view's keys in the batch.
    V3,
}

/// v2's queue size when `queue_size` is not set (the paper's).
pub const DEFAULT_QUEUE: usize = 65536;

/// The largest queue: 2^20 keys.
pub const MAX_QUEUE: usize = 1 << 20;

/// The MoCo objective.
pub struct Moco {
    cfg: Config,
    /// Online projector `g_θ`.
    pub projector: Head,
    /// Momentum projector `g_ξ`.
    pub target_projector: Head,
    /// The predictor `p_θ` (v3).
    pub predictor: Option<Head>,
    /// The queue of keys `[K, D]` and the write position as one value, both role `Buffer` (v2).
    pub queue: Option<Queue>,
}

/// v2's queue of keys: objective state, saved in checkpoints.
pub struct Queue {
    /// The keys `[K, D]`, unit rows.
    pub keys: Param,
    /// The next row to write, as one value.
    pub ptr: Param,
}

/// The momentum at `step` of `total`: from `base` to 1 on a cosine (BYOL's schedule).
pub use latent_sdk::schedule::cosine_momentum as momentum;

impl Plugin for Moco {
    type Config = Config;
    const NAME: &'static str = "moco";
    const DESCRIPTION: &'static str = "MoCo v2 (InfoNCE against a queue of earlier keys) and v3 (predictor, symmetric InfoNCE against the batch's keys), with a momentum projector";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [
            ("input_dim", cfg.input_dim),
            ("hidden_dim", cfg.hidden_dim),
            ("output_dim", cfg.output_dim),
        ] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        ensure!(
            cfg.temperature > 0.0 && cfg.temperature.is_finite(),
            "temperature must be positive, got {}",
            cfg.temperature
        );
        ensure!(
            (0.0..=1.0).contains(&cfg.momentum_base),
            "momentum_base must be in [0, 1], got {}",
            cfg.momentum_base
        );
        let init = Init::new(ctx.seed);
        let (h, d) = (cfg.hidden_dim, cfg.output_dim);
        let (projector, predictor, queue) = match cfg.version {
            Version::V2 => {
                let k = cfg.queue_size.unwrap_or(DEFAULT_QUEUE);
                ensure!(
                    (1..=MAX_QUEUE).contains(&k),
                    "queue_size must be 1 to {MAX_QUEUE}, got {k}"
                );
                let blocks = [
                    Block::new(cfg.input_dim, h, false, Activation::Relu, true),
                    Block::new(h, d, false, Activation::None, true),
                ];
                let projector = Head::new(&init.pp("projector"), &blocks);
                // random unit rows (lightly: normalised Gaussian rows; here normalised uniform ones)
                let mut q = init.uniform(k * d, 1.0);
                for row in q.chunks_mut(d) {
                    let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    row.iter_mut().for_each(|v| *v /= n);
                }
                let keys = Param::new(init.name("queue"), vec![k, d], q, ParamRole::Buffer);
                let ptr = Param::new(init.name("queue_ptr"), vec![1], vec![0.0], ParamRole::Buffer);
                (projector, None, Some(Queue { keys, ptr }))
            }
            Version::V3 => {
                ensure!(cfg.queue_size.is_none(), "queue_size is a v2 key: MoCo v3 contrasts with the other view's keys in the batch and keeps no queue");
                ensure!(
                    !cfg.symmetric,
                    "symmetric is a v2 key: MoCo v3's loss is symmetric already"
                );
                let projector = Head::new(
                    &init.pp("projector"),
                    &[
                        Block::new(cfg.input_dim, h, true, Activation::Relu, false),
                        Block::new(h, d, true, Activation::None, false).without_affine(),
                    ],
                );
                let predictor = Head::new(
                    &init.pp("predictor"),
                    &[
                        Block::new(d, h, true, Activation::Relu, false),
                        Block::new(h, d, false, Activation::None, false),
                    ],
                );
                (projector, Some(predictor), None)
            }
        };
        let target_projector = projector.target_copy("target_projector");
        Ok(Moco { cfg, projector, target_projector, predictor, queue })
    }
}

impl Module for Moco {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.projector.visit_params(f);
        self.target_projector.visit_params(f);
        if let Some(p) = &mut self.predictor {
            p.visit_params(f);
        }
        if let Some(q) = &mut self.queue {
            f(&mut q.keys);
            f(&mut q.ptr);
        }
    }
}

impl Objective for Moco {
    const NEEDS_TARGET: bool = true;

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        let (loss, top1, pos) = match self.cfg.version {
            Version::V2 => self.v2(g, b)?,
            Version::V3 => self.v3(g, b)?,
        };
        let m = momentum(self.cfg.momentum_base, b.step, b.total_steps);
        Ok(Loss::new(loss)
            .metric("momentum", m)
            .metric("top1", top1)
            .metric("pos_cosine", pos)
            .target_momentum(m))
    }
}

impl Moco {
    /// v2: queries from view 0, keys from view 1, negatives from the queue, which then takes
    /// the keys (in training).
    fn v2(&mut self, g: &Graph, b: &Views) -> anyhow::Result<(Var, f64, f64)> {
        b.expect("moco", 2, true, self.cfg.input_dim, 1)?;
        let d = self.cfg.output_dim;
        let Some(queue) = &mut self.queue else { bail!("moco v2 has no queue") };
        let k_rows = queue.keys.shape[0];
        let ptr = queue.ptr.value[0];
        ensure!(
            ptr >= 0.0 && ptr.fract() == 0.0 && (ptr as usize) < k_rows,
            "queue_ptr is {ptr}, not a row of the queue of {k_rows}"
        );
        ensure!(
            queue.keys.value.len() == k_rows * d,
            "the queue holds {} values, not {k_rows} x {d}",
            queue.keys.value.len()
        );
        // (query view, key view) pairs: the paper's one, or both ways (`symmetric`)
        let pairs: &[(usize, usize)] =
            if self.cfg.symmetric { &[(0, 1), (1, 0)] } else { &[(0, 1)] };
        let bank = g.constant(&Tensor::new(vec![k_rows, d], queue.keys.value.clone()))?;
        let (mut losses, mut top1, mut pos, mut keys) = (Vec::new(), 0.0, 0.0, Vec::new());
        for &(qv, kv) in pairs {
            let q = self.projector.forward(g, &b.views[qv]);
            // the key runs on the targets' graph, which records nothing
            let k = self.target_projector.forward(b.targets[kv].graph(), &b.targets[kv]);
            let key = g.constant(&k.value())?;
            let (l, t1) = loss::info_nce(&q, &key, &bank, self.cfg.temperature);
            losses.push(l);
            top1 += t1 / pairs.len() as f64;
            pos += q.cosine_rows(&key).mean().item() / pairs.len() as f64;
            keys.push(k.l2_normalize().values());
        }
        let loss =
            if losses.len() == 2 { losses[0].add(&losses[1]).scale(0.5) } else { losses.remove(0) };
        if b.train {
            // every pair saw the queue as it was; then the keys go in, view 1's first
            let mut p = ptr as usize;
            for k in &keys {
                loss::enqueue(&mut queue.keys.value, &mut p, k, d);
            }
            queue.ptr.value[0] = p as f32;
        }
        Ok((loss, top1, pos))
    }

    /// v3: queries from both views through projector and predictor, keys of both views from
    /// the momentum projector, each query against the other view's keys.
    fn v3(&mut self, g: &Graph, b: &Views) -> anyhow::Result<(Var, f64, f64)> {
        // the batch-norms need two rows
        b.expect("moco", 2, true, self.cfg.input_dim, 2)?;
        let Some(predictor) = &mut self.predictor else { bail!("moco v3 has no predictor") };
        let q: Vec<Var> =
            b.views.iter().map(|v| predictor.forward(g, &self.projector.forward(g, v))).collect();
        let k: Vec<Var> =
            b.targets.iter().map(|t| self.target_projector.forward(t.graph(), t)).collect();
        let k = [g.constant(&k[0].value())?, g.constant(&k[1].value())?];
        let (loss, top1) =
            loss::symmetric_ctr([&q[0], &q[1]], [&k[0], &k[1]], self.cfg.temperature);
        let pos =
            (q[0].cosine_rows(&k[1]).mean().item() + q[1].cosine_rows(&k[0]).mean().item()) / 2.0;
        Ok((loss, top1, pos))
    }
}

latent_sdk::export_plugins!(objectives: [Moco], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
