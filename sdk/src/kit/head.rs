//! The projection head shared by objectives: SimCLR's `g`, BYOL's projector and predictor (and
//! their EMA target copy), and the helpers that run one head over several views.
//!
//! ```text
//! g(h) = W₂ · ReLU(BN(W₁ · h)) + b₂    (SimCLR v1 section 2.1; BYOL section 3.3; the form of
//!                                        lightly's SimCLR/BYOL projection and prediction heads)
//! ```
//! # Shapes
//! h `[B, input_dim]` -> W₁ (no bias, BN follows) `[B, hidden_dim]` -> BatchNorm1d -> ReLU ->
//! W₂ (with bias) `[B, output_dim]`.
//!
//! Parameter names follow PyTorch's `nn.Sequential` indices so a state dict maps one to one:
//! `projector.0.weight`, `projector.1.{weight,bias,running_mean,running_var}`,
//! `projector.3.{weight,bias}`.
//!
//! The head is applied to each view separately (as lightly's examples do: `z0 = g(h0)`,
//! `z1 = g(h1)`), so batch-norm statistics are per view. Kit layers keep the cache of their
//! last forward only, so [`backward_views`] re-runs the training forward of each view (with the
//! running statistics snapshotted and restored, so they move once per view per step, as in
//! PyTorch) before its backward. The extra forward costs one head pass per view.

use super::{BatchNorm, Init, Layer, Linear, Module, Param, Relu, Tensor};

/// Linear -> BatchNorm1d -> ReLU -> Linear.
pub struct ProjectionHead {
    /// `projector.0`: `[hidden, input]`, no bias.
    pub fc1: Linear,
    /// `projector.1`: BatchNorm1d over `hidden`.
    pub bn: BatchNorm,
    relu: Relu,
    /// `projector.3`: `[output, hidden]` with bias.
    pub fc2: Linear,
}

impl ProjectionHead {
    /// A head with PyTorch's default initialisation, parameters named under `init`'s prefix.
    pub fn new(init: &Init, input_dim: usize, hidden_dim: usize, output_dim: usize) -> Self {
        ProjectionHead {
            fc1: Linear::new(&init.pp("0"), input_dim, hidden_dim, false),
            bn: BatchNorm::new(&init.pp("1"), hidden_dim),
            relu: Relu::new(),
            fc2: Linear::new(&init.pp("3"), hidden_dim, output_dim, true),
        }
    }

    /// The EMA target of this head: every trained parameter becomes a role-`Target` copy named
    /// `<prefix>.<index>.<leaf>` with `ema_of` the online name; batch-norm running statistics
    /// become the target's own buffers (no `ema_of`), updated by the target's own forward.
    pub fn target_copy(&self, prefix: &str) -> ProjectionHead {
        let rename = |p: &Param| {
            let leaf = p.name.split_once('.').map(|(_, rest)| rest).unwrap_or(&p.name);
            p.target_copy(format!("{prefix}.{leaf}"))
        };
        let lin = |l: &Linear| {
            let (i, o) = l.dims();
            let mut t = Linear::new(&Init::new(0), i, o, l.bias.is_some());
            t.weight = rename(&l.weight);
            t.bias = l.bias.as_ref().map(rename);
            t
        };
        let mut bn = BatchNorm::new(&Init::new(0), self.bn.weight.value.len());
        bn.weight = rename(&self.bn.weight);
        bn.bias = rename(&self.bn.bias);
        bn.running_mean = rename(&self.bn.running_mean);
        bn.running_var = rename(&self.bn.running_var);
        bn.eps = self.bn.eps;
        bn.momentum = self.bn.momentum;
        ProjectionHead { fc1: lin(&self.fc1), bn, relu: Relu::new(), fc2: lin(&self.fc2) }
    }
}

impl Module for ProjectionHead {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.fc1.visit_params(f);
        self.bn.visit_params(f);
        self.fc2.visit_params(f);
    }
}

impl Layer for ProjectionHead {
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

/// Forward of `head` on each view separately.
pub fn forward_views<L: Layer + ?Sized>(head: &mut L, xs: &[Tensor], train: bool) -> Vec<Tensor> {
    xs.iter().map(|x| head.forward(x, train)).collect()
}

/// Accumulates `head`'s parameter gradients for each view and returns d loss / d input of each
/// view. Re-runs each view's training forward first (buffers restored afterwards).
pub fn backward_views<L: Layer + ?Sized>(head: &mut L, xs: &[Tensor], dys: &[Tensor]) -> Vec<Tensor> {
    xs.iter()
        .zip(dys)
        .map(|(x, dy)| {
            let mut saved = Vec::new();
            head.visit_params(&mut |p| saved.push((!p.trainable()).then(|| p.value.clone())));
            let _ = head.forward(x, true);
            let mut i = 0;
            head.visit_params(&mut |p| {
                if let Some(v) = saved[i].take() {
                    p.value = v;
                }
                i += 1;
            });
            head.backward(dy)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::check_layer;

    #[test]
    fn gradients_match_finite_differences_and_names_follow_pytorch() {
        let mut head = ProjectionHead::new(&Init::new(5).pp("projector"), 6, 8, 4);
        let mut names = Vec::new();
        head.visit_params(&mut |p| names.push(p.name.clone()));
        assert_eq!(names[0], "projector.0.weight");
        assert_eq!(names.last().unwrap(), "projector.3.bias");
        // Finite differences of step 1e-2 are wrong where a ReLU input sits within 1e-2 of 0
        // (seed 21 has one such unit); seed 22 has none, so every entry is compared.
        check_layer(&mut head, &[5, 6], 22, 2e-2);
    }

    #[test]
    fn target_copy_follows_the_online_names() {
        let head = ProjectionHead::new(&Init::new(1).pp("projector"), 3, 4, 2);
        let mut t = head.target_copy("target_projector");
        let mut seen = Vec::new();
        t.visit_params(&mut |p| seen.push((p.name.clone(), p.role, p.ema_of.clone())));
        assert_eq!(seen[0], ("target_projector.0.weight".into(), crate::abi::ParamRole::Target, Some("projector.0.weight".into())));
        assert!(seen.iter().any(|(n, r, e)| n == "target_projector.1.running_mean" && *r == crate::abi::ParamRole::Buffer && e.is_none()));
    }
}
