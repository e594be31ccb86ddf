//! DINO objective plugin: a student head, its EMA teacher head, and the teacher's centre.
//!
//! - \[0\] DINO, Caron et al. 2021, <https://arxiv.org/abs/2104.14294>
//! - \[1\] facebookresearch/dino `main_dino.py`; lightly 1.6 `DINOLoss`, `DINOProjectionHead`
//!
//! The host passes the online (student) encoder output of every view and the target
//! (teacher, EMA) encoder output of the first `T` views (`NEEDS_TARGET`; with multi-crop the
//! global crops come first and only they reach the teacher). This plugin owns the rest:
//!
//! ```text
//! student: s_v = head(y_v)              v = 0..V   (DINO head, see DinoHead)
//! teacher: t_v = teacher_head(y'_v)     v = 0..T   (EMA of head; τ_k cosine from momentum_base to 1)
//! loss   = cross-entropy of softmax((t − c)/τ_t) against log_softmax(s/τ_s), every pair t ≠ s  (see [`loss`])
//! c      ← 0.9 c + 0.1 · batch mean of the teacher logits     (objective state, parameter `center`)
//! ```
//! The heads run once on all views of their side stacked (the reference's `MultiCropWrapper`),
//! so a batch-norm in the head (`batch_norm = true`) sees every view. The centre is a role-
//! `Buffer` parameter: saved in every checkpoint, restored by `--resume`.
//!
//! Schedules in epochs come from the host's `begin_epoch`: the teacher temperature warms up
//! linearly from `warmup_teacher_temp` to `teacher_temp` over `warmup_teacher_temp_epochs`, and
//! during the first `freeze_last_layer` epochs the last layer takes no update (its
//! parameters are `frozen`: the host leaves their values and optimizer moments alone, as the
//! reference's `grad = None`; gradients still flow through it).
//!
//! Parameters, in visit order: `head.layers.*`, `head.last_layer.{weight_g, weight_v}`,
//! `teacher_head.*` (targets), `center`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `input_dim` | 128 | encoder output size (resnet-mini gives 128) |
//! | `hidden_dim` | 2048 | MLP width |
//! | `bottleneck_dim` | 256 | MLP output, L2-normalised before the last layer |
//! | `output_dim` | 65536 | K, the number of prototypes (small data: 1024–4096, see below) |
//! | `batch_norm` | false | BatchNorm1d in the MLP (the paper: off for ViT) |
//! | `norm_last_layer` | true | fix the weight norm's `g` at 1 (the paper's default) |
//! | `freeze_last_layer` | 1 | epochs without updates of the last layer |
//! | `student_temp` | 0.1 | τ_s |
//! | `teacher_temp` | 0.04 | τ_t after the warm-up |
//! | `warmup_teacher_temp` | 0.04 | τ_t at epoch 0 |
//! | `warmup_teacher_temp_epochs` | 0 | epochs of the linear warm-up (the paper's "boost": 0.04 → 0.07 over 30) |
//! | `center_momentum` | 0.9 | m of the centre's EMA |
//! | `momentum_base` | 0.996 | teacher EMA rate at step 0, rising to 1 on a cosine |
//!
//! K: the paper keeps 65,536 prototypes for ImageNet; lightly's CIFAR-10 example uses 2,048
//! (with `hidden_dim` 512, `bottleneck_dim` 64), the recipe `examples/configs/dino-resnet-mnist.toml`
//! takes for 4,000 digits.
//!
//! Metrics: `loss`, `tau` (teacher momentum), `teacher_temp`, `teacher_entropy` (mean entropy
//! of the teacher's softmax, at most ln K), `kl` (mean KL(teacher ‖ student) over the pairs,
//! `loss − teacher_entropy`), and `alarm_uniform`, 1 when the teacher's entropy is within 2 % of
//! ln K: its output is uniform, so the loss sits at ln K or above, the collapse of dino #43 and
//! dinov2 #407, where the teacher says nothing and the student learns nothing. The host warns
//! when an `alarm_*` metric is raised.

pub mod loss;

use latent_sdk::prelude::*;

/// DINO settings; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Encoder output size.
    pub input_dim: usize,
    /// MLP width.
    pub hidden_dim: usize,
    /// MLP output size.
    pub bottleneck_dim: usize,
    /// Number of prototypes K.
    pub output_dim: usize,
    /// BatchNorm1d in the MLP.
    pub batch_norm: bool,
    /// Fix the last layer's weight-norm length at 1.
    pub norm_last_layer: bool,
    /// Epochs without updates of the last layer.
    pub freeze_last_layer: u64,
    /// Student temperature.
    pub student_temp: f64,
    /// Teacher temperature after the warm-up.
    pub teacher_temp: f64,
    /// Teacher temperature at epoch 0.
    pub warmup_teacher_temp: f64,
    /// Epochs of the teacher-temperature warm-up.
    pub warmup_teacher_temp_epochs: u64,
    /// Momentum of the centre's EMA.
    pub center_momentum: f64,
    /// Teacher EMA rate at step 0.
    pub momentum_base: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            input_dim: 128,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            output_dim: 65536,
            batch_norm: false,
            norm_last_layer: true,
            freeze_last_layer: 1,
            student_temp: 0.1,
            teacher_temp: 0.04,
            warmup_teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            center_momentum: 0.9,
            momentum_base: 0.996,
        }
    }
}

/// The DINO objective.
pub struct Dino {
    cfg: Config,
    /// The student head.
    pub head: DinoHead,
    /// The teacher head (EMA of `head`).
    pub teacher_head: DinoHead,
    /// The centre of the teacher logits, `[1, K]`, role `Buffer`.
    pub center: Param,
    /// The epoch the host said is running.
    pub epoch: u64,
}

impl Plugin for Dino {
    type Config = Config;
    const NAME: &'static str = "dino";
    const DESCRIPTION: &'static str =
        "DINO: self-distillation to a centred, sharpened EMA teacher (multi-crop ready)";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        for (key, v) in [
            ("input_dim", cfg.input_dim),
            ("hidden_dim", cfg.hidden_dim),
            ("bottleneck_dim", cfg.bottleneck_dim),
            ("output_dim", cfg.output_dim),
        ] {
            ensure!(v > 0, "{key} must be positive, got {v}");
        }
        ensure!(cfg.output_dim >= 2, "output_dim (K) must be at least 2, got {}", cfg.output_dim);
        for (key, v) in [
            ("student_temp", cfg.student_temp),
            ("teacher_temp", cfg.teacher_temp),
            ("warmup_teacher_temp", cfg.warmup_teacher_temp),
        ] {
            ensure!(v > 0.0 && v.is_finite(), "{key} must be positive, got {v}");
        }
        ensure!(
            (0.0..1.0).contains(&cfg.center_momentum),
            "center_momentum must be in [0, 1), got {}",
            cfg.center_momentum
        );
        ensure!(
            (0.0..=1.0).contains(&cfg.momentum_base),
            "momentum_base must be in [0, 1], got {}",
            cfg.momentum_base
        );
        let init = Init::new(ctx.seed);
        let head = DinoHead::new(
            &init.pp("head"),
            cfg.input_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            cfg.output_dim,
            cfg.batch_norm,
            cfg.norm_last_layer,
        );
        let teacher_head = head.target_copy("teacher_head");
        let center = init.constant("center", vec![1, cfg.output_dim], 0.0, ParamRole::Buffer);
        let mut dino = Dino { cfg, head, teacher_head, center, epoch: 0 };
        dino.set_epoch(0);
        Ok(dino)
    }
}

impl Dino {
    fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        let frozen = epoch < self.cfg.freeze_last_layer;
        self.head.last_layer.weight_v.frozen = frozen;
        self.head.last_layer.weight_g.frozen = frozen;
    }

    /// τ_t of the current epoch.
    pub fn teacher_temp(&self) -> f64 {
        let c = &self.cfg;
        loss::teacher_temp(
            self.epoch,
            c.warmup_teacher_temp,
            c.teacher_temp,
            c.warmup_teacher_temp_epochs,
        )
    }
}

impl Module for Dino {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.head.visit_params(f);
        self.teacher_head.visit_params(f);
        f(&mut self.center);
    }
}

impl Objective for Dino {
    const NEEDS_TARGET: bool = true;

    fn begin_epoch(&mut self, info: EpochInfo) -> anyhow::Result<()> {
        self.set_epoch(info.epoch);
        Ok(())
    }

    fn forward(&mut self, g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        let (v, t, d) = (b.views.len(), b.targets.len(), self.cfg.input_dim);
        ensure!(v >= 2, "dino needs at least 2 views, got {v}");
        ensure!((1..=v).contains(&t), "dino needs the teacher (target-encoder) output of 1 to {v} views (the global crops, first), got {t}");
        // a batch-norm in the head needs 2 rows in training
        b.expect_shapes("dino", true, d, if self.cfg.batch_norm { 2 } else { 1 })?;
        let (rows, k) = (b.views[0].rows(), self.cfg.output_dim);

        // student: all views stacked through the head once, then split per view
        let s = self.head.forward(g, &cat_rows(&b.views.iter().collect::<Vec<_>>()));
        let student: Vec<Var> = (0..v).map(|i| s.rows_range(i * rows, (i + 1) * rows)).collect();
        // teacher: the targets' graph records nothing (stop-gradient)
        let tg = b.targets[0].graph();
        let tl = self
            .teacher_head
            .forward(tg, &cat_rows(&b.targets.iter().collect::<Vec<_>>()))
            .values();
        let temp = self.teacher_temp();
        let parts: Vec<&[f32]> = tl.chunks(rows * k).collect();
        let teacher: Vec<Vec<f32>> = parts
            .iter()
            .map(|l| loss::teacher_probs(l, k, &self.center.value, temp as f32))
            .collect();

        let loss = loss::dino_loss(&student, &teacher, self.cfg.student_temp as f32);
        if b.train {
            self.center.value =
                loss::updated_center(&self.center.value, &parts, self.cfg.center_momentum as f32);
        }
        let h = teacher.iter().map(|p| loss::entropy(p, k)).sum::<f64>() / t as f64;
        let l = loss.item();
        let ln_k = (k as f64).ln();
        let uniform = h >= 0.98 * ln_k;
        let tau =
            latent_sdk::schedule::cosine_momentum(self.cfg.momentum_base, b.step, b.total_steps);
        Ok(Loss::new(loss)
            .metric("tau", tau)
            .metric("teacher_temp", temp)
            .metric("teacher_entropy", h)
            .metric("kl", l - h)
            .metric("alarm_uniform", if uniform { 1.0 } else { 0.0 })
            .target_momentum(tau))
    }
}

latent_sdk::export_plugins!(objectives: [Dino], encoders: [], augmentations: []);

#[cfg(test)]
mod tests;
