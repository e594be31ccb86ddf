//! Finite-difference gradient checks for any [`Layer`].
//!
//! The loss is `L = Σ y ⊙ r` for a fixed random `r`, so `dL/dy = r`; the analytic `dx` and
//! parameter gradients from `backward` are compared with central differences of `L` in f64.

use super::{Layer, Module, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random values in [-1, 1).
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::new(shape.to_vec(), (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect())
}

/// Largest absolute difference, relative to the largest magnitude in either (at least 1e-3).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().chain(b).fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Checks input and parameter gradients of `layer` in training mode; panics with the worst
/// relative error (max abs difference over the largest gradient) if above `tol`.
pub fn check_layer<L: Layer + ?Sized>(layer: &mut L, shape: &[usize], seed: u64, tol: f64) {
    check_layer_mode(layer, shape, seed, tol, true)
}

/// As [`check_layer`], in training (`train = true`) or evaluation mode.
pub fn check_layer_mode<L: Layer + ?Sized>(
    layer: &mut L,
    shape: &[usize],
    seed: u64,
    tol: f64,
    train: bool,
) {
    let x = random(shape, seed);
    // Buffers (running stats) change on every training forward: snapshot and restore them.
    let snapshot = snapshot(layer);
    let y = layer.forward(&x, true);
    let r = random(&y.shape, seed + 1);
    restore(layer, &snapshot);
    layer.zero_grad();
    let _ = layer.forward(&x, train);
    // backward of the forward just run (in evaluation mode, through the running statistics)
    let dx = layer.backward(&r);
    let loss = |layer: &mut L, x: &Tensor| -> f64 {
        let y = layer.forward(x, train);
        restore(layer, &snapshot);
        y.data.iter().zip(&r.data).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let h = 1e-2f32;
    // input gradient
    let mut num = Vec::with_capacity(x.len());
    for i in 0..x.len() {
        let mut xp = x.clone();
        xp.data[i] += h;
        let lp = loss(layer, &xp);
        xp.data[i] -= 2.0 * h;
        let lm = loss(layer, &xp);
        num.push((lp - lm) / (2.0 * h as f64));
    }
    let ana: Vec<f64> = dx.data.iter().map(|&v| v as f64).collect();
    let e = rel_err(&ana, &num);
    assert!(
        e < tol,
        "input gradient off by {e:.2e} (shape {shape:?})\nanalytic {ana:?}\nnumeric {num:?}"
    );
    // parameter gradients
    let mut grads: Vec<(String, Vec<f32>, bool)> = Vec::new();
    layer.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.clone(), p.trainable())));
    for (pi, (name, grad, trainable)) in grads.iter().enumerate() {
        if !trainable {
            continue;
        }
        let mut num = Vec::new();
        for j in 0..grad.len() {
            let lp = {
                perturb(layer, pi, j, h);
                let l = loss(layer, &x);
                perturb(layer, pi, j, -h);
                l
            };
            let lm = {
                perturb(layer, pi, j, -h);
                let l = loss(layer, &x);
                perturb(layer, pi, j, h);
                l
            };
            num.push((lp - lm) / (2.0 * h as f64));
        }
        let ana: Vec<f64> = grad.iter().map(|&v| v as f64).collect();
        let e = rel_err(&ana, &num);
        assert!(e < tol, "gradient of {name} off by {e:.2e} (shape {shape:?})\nanalytic {ana:?}\nnumeric {num:?}");
    }
}

/// Every parameter's values, in visit order.
pub(crate) fn snapshot<L: Module + ?Sized>(layer: &mut L) -> Vec<Vec<f32>> {
    let mut v = Vec::new();
    layer.visit_params(&mut |p| v.push(p.value.clone()));
    v
}

/// Puts back the values of every non-trained parameter (buffers) from a [`snapshot`].
pub(crate) fn restore<L: Module + ?Sized>(layer: &mut L, snap: &[Vec<f32>]) {
    let mut i = 0;
    layer.visit_params(&mut |p| {
        if !p.trainable() {
            p.value.copy_from_slice(&snap[i]);
        }
        i += 1;
    });
}

/// Adds `h` to entry `j` of parameter number `param`.
pub(crate) fn perturb<L: Module + ?Sized>(layer: &mut L, param: usize, j: usize, h: f32) {
    let mut i = 0;
    layer.visit_params(&mut |p| {
        if i == param {
            p.value[j] += h;
        }
        i += 1;
    });
}
