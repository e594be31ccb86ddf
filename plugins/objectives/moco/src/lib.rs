//! MoCo v2 objective plugin: a projector, its momentum (EMA) copy, and InfoNCE of each query
//! against its key and a queue of earlier keys.
//!
//! - \[0\] MoCo, He et al. 2020, <https://arxiv.org/abs/1911.05722>
//! - \[1\] MoCo v2, Chen, Fan, Girshick, He 2020, <https://arxiv.org/abs/2003.04297>
//!
//! ```text
//! q = g_θ(h₀)                 query: the online encoder and projector on view 0
//! k = g_ξ(h'₁)                key: the momentum encoder and projector on view 1 (no gradient)
//! L = InfoNCE(q, k; queue, τ)                         (see [`loss`])
//! queue ← the normalised keys, first in, first out (training steps only)
//! ```
//! The host keeps the momentum encoder (ξ ← m ξ + (1 − m) θ); this plugin keeps the
//! momentum projector (`target_projector.*`, role `Target`) and the queue, which is objective
//! state: the parameters `queue` `[K, D]` and `queue_ptr` `[1]` have role `Buffer`, so the
//! host saves them in every checkpoint and `--resume` restores them bit for bit. The queue
//! starts as random unit vectors (seeded). As in the paper and lightly's MoCo example the loss
//! is asymmetric: view 0 gives the queries, view 1 the keys.
//!
//! The projector is MoCo v2's MLP (lightly's `MoCoProjectionHead`): Linear → ReLU → Linear,
//! with biases. Parameters: `projector.0.*`, `projector.2.*`, `target_projector.*`, `queue`,
//! `queue_ptr`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size |
//! | `hidden_dim` | 512 | hidden width of the projector (the paper: 2048) |
//! | `output_dim` | 128 | key and query size D (the paper: 128) |
//! | `temperature` | 0.2 | τ of InfoNCE (MoCo v2) |
//! | `queue_size` | 65536 | K, the number of queued keys (the paper's); for small data keep it below one epoch of keys, e.g. 2048 for 4,000 images, or the queue holds keys of the query's own image |
//! | `momentum_base` | 0.99 | m at step 0, rising to 1 on a cosine (lightly's MoCo example; the paper keeps 0.999) |
//!
//! Metrics: `loss`, `momentum`, `top1` (share of queries whose key beats every queued key),
//! `pos_cosine` (mean cos(q, k)).

pub mod loss;

use latent_sdk::prelude::*;

/// MoCo settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// Hidden width of the projector.
    pub hidden_dim: usize,
    /// Key and query size.
    pub output_dim: usize,
    /// τ.
    pub temperature: f32,
    /// K.
    pub queue_size: usize,
    /// Momentum at step 0.
    pub momentum_base: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { input_dim: 128, hidden_dim: 512, output_dim: 128, temperature: 0.2, queue_size: 65536, momentum_base: 0.99 }
    }
}

/// The largest queue: 2^20 keys.
pub const MAX_QUEUE: usize = 1 << 20;

/// The MoCo objective.
pub struct Moco {
    cfg: Config,
    /// Online projector `g_θ`.
    pub projector: Head,
    /// Momentum projector `g_ξ`.
    pub target_projector: Head,
    /// The queue of keys `[K, D]` (role `Buffer`).
    pub queue: Param,
    /// The write position, as one value (role `Buffer`).
    pub queue_ptr: Param,
}

/// The momentum at `step` of `total`: from `base` to 1 on a cosine (BYOL's schedule).
pub fn momentum(base: f64, step: u64, total: u64) -> f64 {
    if total == 0 {
        return base;
    }
    let k = step.min(total) as f64;
    1.0 - (1.0 - base) * ((std::f64::consts::PI * k / total as f64).cos() + 1.0) / 2.0
}

impl Plugin for Moco {
    type Config = Config;
    const NAME: &'static str = "moco";
    const DESCRIPTION: &'static str = "MoCo v2: projector + momentum projector, InfoNCE against a queue of earlier keys";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [("input_dim", cfg.input_dim), ("hidden_dim", cfg.hidden_dim), ("output_dim", cfg.output_dim)] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        ensure!(cfg.temperature > 0.0 && cfg.temperature.is_finite(), "temperature must be positive, got {}", cfg.temperature);
        ensure!((1..=MAX_QUEUE).contains(&cfg.queue_size), "queue_size must be 1 to {MAX_QUEUE}, got {}", cfg.queue_size);
        ensure!((0.0..=1.0).contains(&cfg.momentum_base), "momentum_base must be in [0, 1], got {}", cfg.momentum_base);
        let init = Init::new(ctx.seed);
        let blocks = [Block::new(cfg.input_dim, cfg.hidden_dim, false, Activation::Relu, true), Block::new(cfg.hidden_dim, cfg.output_dim, false, Activation::None, true)];
        let projector = Head::new(&init.pp("projector"), &blocks);
        let target_projector = projector.target_copy("target_projector");
        // random unit rows (lightly: normalised Gaussian rows; here normalised uniform ones)
        let d = cfg.output_dim;
        let mut q = init.uniform(cfg.queue_size * d, 1.0);
        for row in q.chunks_mut(d) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= n);
        }
        let queue = Param::new(init.name("queue"), vec![cfg.queue_size, d], q, latent_sdk::abi::ParamRole::Buffer);
        let queue_ptr = Param::new(init.name("queue_ptr"), vec![1], vec![0.0], latent_sdk::abi::ParamRole::Buffer);
        Ok(Moco { cfg, projector, target_projector, queue, queue_ptr })
    }
}

impl Module for Moco {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.projector.visit_params(f);
        self.target_projector.visit_params(f);
        f(&mut self.queue);
        f(&mut self.queue_ptr);
    }
}

impl Objective for Moco {
    const NEEDS_TARGET: bool = true;

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        // queries come from view 0, keys from view 1
        b.expect("moco", 2, true, self.cfg.input_dim, 1)?;
        let d = self.cfg.output_dim;
        let ptr = self.queue_ptr.value[0];
        ensure!(ptr >= 0.0 && ptr.fract() == 0.0 && (ptr as usize) < self.cfg.queue_size, "queue_ptr is {ptr}, not a row of the queue of {}", self.cfg.queue_size);
        ensure!(self.queue.value.len() == self.cfg.queue_size * d, "the queue holds {} values, not {} x {d}", self.queue.value.len(), self.cfg.queue_size);
        let q = self.projector.forward(g, &b.views[0]);
        // the key runs on the targets' graph, which records nothing
        let t = b.targets[1].graph();
        let k = self.target_projector.forward(t, &b.targets[1]);
        let queue = g.constant(&Tensor::new(vec![self.cfg.queue_size, d], self.queue.value.clone()))?;
        let key = g.constant(&k.value())?;
        let (loss, top1) = loss::info_nce(&q, &key, &queue, self.cfg.temperature);
        let pos = q.cosine_rows(&key).mean().item();
        if b.train {
            let keys = k.l2_normalize().values();
            let mut p = ptr as usize;
            loss::enqueue(&mut self.queue.value, &mut p, &keys, d);
            self.queue_ptr.value[0] = p as f32;
        }
        let m = momentum(self.cfg.momentum_base, b.step, b.total_steps);
        Ok(Loss::new(loss).metric("momentum", m).metric("top1", top1).metric("pos_cosine", pos).target_momentum(m))
    }
}

latent_sdk::export_plugins!(objectives: [Moco], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
