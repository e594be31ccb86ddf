//! `template-objective`: an objective plugin.
//!
//! Alignment and uniformity on the unit sphere (Wang and Isola 2020,
//! <https://arxiv.org/abs/2005.10242>), a small loss that trains as it is; replace it with
//! yours.
//!
//! ```text
//! u_i   = z_i / ‖z_i‖                                           each view, [N, D]
//! align = 1/N Σ_i ‖uᴬ_i − uᴮ_i‖²
//! unif  = log( 1/(N(N−1)) Σ_{i≠j} exp(−t ‖u_i − u_j‖²) )       per view, averaged over the two
//! L     = align + weight · (unif(uᴬ) + unif(uᴮ)) / 2
//! ```
//! This file is the forward maths only: the views arrive as traced tensors (`Var`), and the
//! SDK's autodiff returns d L / d views to the host (and fills the gradients of any parameters
//! taken onto the tape with `g.param`).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `t` | 2.0 | uniformity temperature |
//! | `weight` | 1.0 | weight of the uniformity term |

use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Uniformity temperature t.
    pub t: f64,
    /// Weight of the uniformity term.
    pub weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { t: 2.0, weight: 1.0 }
    }
}

/// The objective. Heads would be fields here (`Head::simclr(&Init::new(ctx.seed).pp("projector"),
/// ...)`), built in `new` and exposed in `visit_params`.
pub struct TemplateObjective {
    cfg: Config,
}

impl Plugin for TemplateObjective {
    type Config = Config;
    const NAME: &'static str = "template-objective";
    const DESCRIPTION: &'static str = "alignment + uniformity on the unit sphere";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.t > 0.0, "t must be positive, got {}", cfg.t);
        ensure!(cfg.weight >= 0.0, "weight must be non-negative, got {}", cfg.weight);
        Ok(TemplateObjective { cfg })
    }
}

impl Module for TemplateObjective {
    // No parameters. With heads: `self.head.visit_params(f)`.
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

/// `log( 1/(N(N−1)) Σ_{i≠j} exp(−t ‖u_i − u_j‖²) )` of unit rows `u` `[N, D]`.
fn uniformity(u: &Var, t: f32) -> Var {
    let n = u.rows();
    let sq = u.matmul_t(u) * -2.0 + 2.0; // ‖u_i − u_j‖² = 2 − 2 u_iᵀu_j for unit rows
    let diagonal: Vec<bool> = (0..n * n).map(|k| k / n == k % n).collect();
    let all = (sq * -t).masked_fill(&diagonal, f32::NEG_INFINITY).reshape(1, n * n);
    all.logsumexp_rows() - ((n * (n - 1)) as f32).ln()
}

impl Objective for TemplateObjective {
    fn forward(&mut self, _g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        ensure!(
            b.views.len() == 2,
            "template-objective needs exactly 2 views, got {}",
            b.views.len()
        );
        let (n, _) = b.views[0].dims();
        ensure!(
            b.views[1].dims() == b.views[0].dims(),
            "the two views differ in shape: {:?} and {:?}",
            b.views[0].dims(),
            b.views[1].dims()
        );
        ensure!(n >= 2, "template-objective needs at least 2 samples per batch, got {n}");
        let (ua, ub) = (b.views[0].l2_normalize(), b.views[1].l2_normalize());
        let align = (&ua - &ub).square().sum_rows().mean();
        let unif = (uniformity(&ua, self.cfg.t as f32) + uniformity(&ub, self.cfg.t as f32)) * 0.5;
        let loss = &align + &unif * self.cfg.weight as f32;
        // Metrics are values, off the tape. No target network: set NEEDS_TARGET and
        // `.target_momentum(tau)` to have one.
        Ok(Loss::new(loss).metric("align", align.item()).metric("uniformity", unif.item()))
    }
}

latent_sdk::export_plugins!(objectives: [TemplateObjective], encoders: [], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;

    #[test]
    fn gradient_matches_finite_differences() {
        // through the ABI object, as the host calls it (and `latent check-plugin --deep`)
        let ctx = Context::default();
        let mut obj = latent_sdk::plugin::new_objective::<TemplateObjective>(
            abi_stable::std_types::RStr::from_str(""),
            &ctx,
        )
        .unwrap();
        let views = vec![random(&[5, 4], 1), random(&[5, 4], 2)];
        latent_sdk::check::assert_objective_gradients(&mut obj, views, vec![], vec![], 1e-2, 1e-2);
    }
}
