//! Batch normalisation over `[N, C]` (BatchNorm1d) or `[N, C, H, W]` (BatchNorm2d).
//!
//! ```text
//! train: μ_c, σ²_c = mean, biased variance of channel c over N (and H, W)
//!        y = γ_c · (x − μ_c) / sqrt(σ²_c + ε) + β_c
//!        running_mean ← (1 − m)·running_mean + m·μ_c
//!        running_var  ← (1 − m)·running_var  + m·σ²_c · M/(M − 1)   (M values per channel)
//! eval:  the same with the running statistics
//! backward (train): dx = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂)),  dγ = Σ dy·x̂,  dβ = Σ dy
//! ```
//! Defaults as PyTorch: ε = 1e-5, momentum m = 0.1, γ = 1, β = 0, running stats 0 and 1.

use super::{Init, Layer, Module, Param, Tensor};
use crate::abi::ParamRole;
use rayon::prelude::*;

/// BatchNorm over channel axis 1 of a `[N, C, ...]` tensor.
pub struct BatchNorm {
    /// γ `[C]`.
    pub weight: Param,
    /// β `[C]`.
    pub bias: Param,
    /// Running mean `[C]` (buffer).
    pub running_mean: Param,
    /// Running (unbiased) variance `[C]` (buffer).
    pub running_var: Param,
    /// ε.
    pub eps: f32,
    /// Running-average momentum.
    pub momentum: f32,
    cache: Option<Cache>,
}

struct Cache {
    shape: Vec<usize>,
    xhat: Vec<f32>,
    inv_std: Vec<f32>,
    train: bool,
}

const PAR_MIN: usize = 1 << 15;

impl BatchNorm {
    /// `channels` channels, PyTorch defaults.
    pub fn new(init: &Init, channels: usize) -> BatchNorm {
        BatchNorm {
            weight: init.constant("weight", vec![channels], 1.0, ParamRole::NoDecay),
            bias: init.constant("bias", vec![channels], 0.0, ParamRole::NoDecay),
            running_mean: init.constant("running_mean", vec![channels], 0.0, ParamRole::Buffer),
            running_var: init.constant("running_var", vec![channels], 1.0, ParamRole::Buffer),
            eps: 1e-5,
            momentum: 0.1,
            cache: None,
        }
    }

    fn layout(&self, shape: &[usize]) -> (usize, usize, usize) {
        let c = self.weight.value.len();
        assert!(
            shape.len() >= 2 && shape[1] == c,
            "batch-norm of {c} channels got shape {shape:?}"
        );
        (shape[0], c, shape[2..].iter().product())
    }
}

/// Per-channel (sum, sum of squares) of `x` laid out `[N, C, S]`, or of `x·y` if `y` is given.
fn channel_sums(x: &[f32], y: Option<&[f32]>, n: usize, c: usize, s: usize) -> Vec<(f64, f64)> {
    let one = |ch: usize| {
        let (mut a, mut b) = (0f64, 0f64);
        for i in 0..n {
            let o = (i * c + ch) * s;
            let xs = &x[o..o + s];
            match y {
                None => {
                    let (mut p, mut q) = (0f32, 0f32);
                    for &v in xs {
                        p += v;
                        q += v * v;
                    }
                    a += p as f64;
                    b += q as f64;
                }
                Some(y) => {
                    let ys = &y[o..o + s];
                    let (mut p, mut q) = (0f32, 0f32);
                    for (&v, &w) in xs.iter().zip(ys) {
                        p += v;
                        q += v * w;
                    }
                    a += p as f64;
                    b += q as f64;
                }
            }
        }
        (a, b)
    };
    if x.len() >= PAR_MIN {
        (0..c).into_par_iter().map(one).collect()
    } else {
        (0..c).map(one).collect()
    }
}

/// Applies `f(channel, values)` to every `[S]` block of a `[N, C, S]` buffer, in parallel when large.
fn per_block(out: &mut [f32], c: usize, s: usize, f: impl Fn(usize, usize, &mut [f32]) + Sync) {
    let s = s.max(1);
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(s).enumerate().for_each(|(b, blk)| f(b % c, b, blk));
    } else {
        out.chunks_mut(s).enumerate().for_each(|(b, blk)| f(b % c, b, blk));
    }
}

impl Module for BatchNorm {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
        f(&mut self.running_mean);
        f(&mut self.running_var);
    }
}

impl Layer for BatchNorm {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let (n, c, s) = self.layout(&x.shape);
        let m = n * s;
        let (mean, inv_std): (Vec<f32>, Vec<f32>) = if train {
            assert!(
                m > 1,
                "batch-norm in training needs more than one value per channel, got shape {:?}",
                x.shape
            );
            let sums = channel_sums(&x.data, None, n, c, s);
            let mut mean = Vec::with_capacity(c);
            let mut inv = Vec::with_capacity(c);
            for (ch, &(a, b)) in sums.iter().enumerate() {
                let mu = a / m as f64;
                let var = (b / m as f64 - mu * mu).max(0.0);
                let mo = self.momentum;
                self.running_mean.value[ch] =
                    (1.0 - mo) * self.running_mean.value[ch] + mo * mu as f32;
                self.running_var.value[ch] = (1.0 - mo) * self.running_var.value[ch]
                    + mo * (var * m as f64 / (m - 1) as f64) as f32;
                mean.push(mu as f32);
                inv.push(1.0 / (var as f32 + self.eps).sqrt());
            }
            (mean, inv)
        } else {
            let inv = self.running_var.value.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
            (self.running_mean.value.clone(), inv)
        };
        let mut xhat = x.data.clone();
        per_block(&mut xhat, c, s, |ch, _, blk| {
            let (mu, is) = (mean[ch], inv_std[ch]);
            blk.iter_mut().for_each(|v| *v = (*v - mu) * is);
        });
        let mut y = xhat.clone();
        let (g, b) = (&self.weight.value, &self.bias.value);
        per_block(&mut y, c, s, |ch, _, blk| blk.iter_mut().for_each(|v| *v = g[ch] * *v + b[ch]));
        self.cache = Some(Cache { shape: x.shape.clone(), xhat, inv_std, train });
        Tensor::new(x.shape.clone(), y)
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let cache = self.cache.take().expect("batch-norm: backward without a forward");
        assert_eq!(dy.shape, cache.shape, "batch-norm backward: gradient shape");
        let (n, c, s) = self.layout(&dy.shape);
        let m = (n * s) as f64;
        // Σ dy and Σ dy·x̂ per channel.
        let sums = channel_sums(&dy.data, Some(&cache.xhat), n, c, s);
        for (ch, &(dbeta, dgamma)) in sums.iter().enumerate() {
            self.bias.grad[ch] += dbeta as f32;
            self.weight.grad[ch] += dgamma as f32;
        }
        let g = &self.weight.value;
        let inv = &cache.inv_std;
        let mut dx = dy.data.clone();
        let xhat = &cache.xhat;
        if cache.train {
            let mdy: Vec<f32> = sums.iter().map(|p| (p.0 / m) as f32).collect();
            let mdyx: Vec<f32> = sums.iter().map(|p| (p.1 / m) as f32).collect();
            per_block(&mut dx, c, s, |ch, b, blk| {
                let k = g[ch] * inv[ch];
                let xs = &xhat[b * s..(b + 1) * s];
                for (d, &xh) in blk.iter_mut().zip(xs) {
                    *d = k * (*d - mdy[ch] - xh * mdyx[ch]);
                }
            });
        } else {
            per_block(&mut dx, c, s, |ch, _, blk| {
                let k = g[ch] * inv[ch];
                blk.iter_mut().for_each(|d| *d *= k);
            });
        }
        Tensor::new(dy.shape.clone(), dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::{check_layer, check_layer_mode};

    fn direct(x: &Tensor, g: &[f32], b: &[f32], mean: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let (n, c) = (x.shape[0], x.shape[1]);
        let s: usize = x.shape[2..].iter().product();
        let mut y = vec![0.0; x.len()];
        for ch in 0..c {
            let vals: Vec<f32> = (0..n)
                .flat_map(|i| (0..s).map(move |j| (i, j)))
                .map(|(i, j)| x.data[(i * c + ch) * s + j])
                .collect();
            let (mu, var) = match mean {
                Some((m, v)) => (m[ch], v[ch]),
                None => {
                    let mu = vals.iter().sum::<f32>() / vals.len() as f32;
                    (mu, vals.iter().map(|v| (v - mu).powi(2)).sum::<f32>() / vals.len() as f32)
                }
            };
            for i in 0..n {
                for j in 0..s {
                    let k = (i * c + ch) * s + j;
                    y[k] = g[ch] * (x.data[k] - mu) / (var + 1e-5).sqrt() + b[ch];
                }
            }
        }
        y
    }

    fn sample(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|i| ((i * 7919) % 23) as f32 / 5.0 - 2.0).collect())
    }

    #[test]
    fn matches_direct_formula_in_both_modes() {
        for shape in [vec![6, 3], vec![4, 2, 3, 5]] {
            let mut bn = BatchNorm::new(&Init::new(0), shape[1]);
            bn.weight.value.iter_mut().enumerate().for_each(|(i, v)| *v = 1.0 + i as f32);
            bn.bias.value.iter_mut().enumerate().for_each(|(i, v)| *v = 0.5 * i as f32);
            let x = sample(&shape);
            let y = bn.forward(&x, true);
            let want = direct(&x, &bn.weight.value, &bn.bias.value, None);
            for (a, b) in y.data.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} {b}");
            }
            // running stats moved 10% toward the batch stats (unbiased variance)
            let m = (x.len() / shape[1]) as f32;
            let mu0: f32 = (0..x.len())
                .filter(|k| (k / x.shape[2..].iter().product::<usize>()) % shape[1] == 0)
                .map(|k| x.data[k])
                .sum::<f32>()
                / m;
            assert!((bn.running_mean.value[0] - 0.1 * mu0).abs() < 1e-5);
            let y = bn.forward(&x, false);
            let want = direct(
                &x,
                &bn.weight.value,
                &bn.bias.value,
                Some((&bn.running_mean.value, &bn.running_var.value)),
            );
            for (a, b) in y.data.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} {b}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut bn = BatchNorm::new(&Init::new(0), 3);
        bn.weight.value = vec![0.5, 1.5, -1.0];
        check_layer(&mut bn, &[5, 3], 11, 2e-2);
        check_layer(&mut bn, &[2, 3, 3, 4], 12, 2e-2);
        check_layer(&mut bn, &[1, 3, 2, 3], 13, 2e-2);
        check_layer_mode(&mut bn, &[2, 3, 2, 2], 14, 2e-2, false);
    }
}
