//! Pooling and reshaping: [`MaxPool2d`], [`GlobalAvgPool`], [`Flatten`].
//!
//! ```text
//! MaxPool2d:     y[n, c, i, j] = max_{p<k, q<k} x[n, c, s·i + p − pad, s·j + q − pad]
//!                (positions outside the image are skipped, as PyTorch's −∞ padding)
//!                OH = (H + 2·pad − k) / s + 1;  backward: dy goes to the arg max (first on ties)
//! GlobalAvgPool: y[n, c] = 1/(H·W) Σ_{i, j} x[n, c, i, j];  backward: dx = dy / (H·W)
//! Flatten:       [N, d₁, d₂, ...] -> [N, d₁·d₂·...];  backward reshapes back
//! ```
//! # Shapes
//! MaxPool2d `[N, C, H, W] -> [N, C, OH, OW]`, GlobalAvgPool `[N, C, H, W] -> [N, C]`,
//! Flatten `[N, ...] -> [N, D]`.

use super::{Layer, Module, Param, Tensor};
use rayon::prelude::*;

const PAR_MIN: usize = 1 << 15;

/// Max pooling over `kernel x kernel` windows.
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding (never chosen as the max); at most kernel / 2 as in PyTorch.
    pub padding: usize,
    /// Input shape and, per output, the index of its arg max within its input plane.
    cache: Option<(Vec<usize>, Vec<u32>)>,
}

impl MaxPool2d {
    /// A max pool; PyTorch's `MaxPool2d(kernel, stride, padding)`.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> MaxPool2d {
        assert!(kernel >= 1 && stride >= 1, "max-pool: kernel and stride must be at least 1");
        assert!(
            padding <= kernel / 2,
            "max-pool: padding {padding} is more than half the kernel {kernel}"
        );
        MaxPool2d { kernel, stride, padding, cache: None }
    }

    /// Output `(OH, OW)` for an `H x W` input, or an error if the window does not fit.
    pub fn out_hw(&self, h: usize, w: usize) -> anyhow::Result<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        anyhow::ensure!(
            hp >= self.kernel && wp >= self.kernel,
            "max-pool: a {0}x{0} window does not fit a {h}x{w} input",
            self.kernel
        );
        Ok(((hp - self.kernel) / self.stride + 1, (wp - self.kernel) / self.stride + 1))
    }
}

impl Module for MaxPool2d {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

impl Layer for MaxPool2d {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let (n, c, h, w) = x.dims4("max-pool input").unwrap_or_else(|e| panic!("{e:#}"));
        let (oh, ow) = self.out_hw(h, w).unwrap_or_else(|e| panic!("{e:#}"));
        let (k, s, pad) = (self.kernel as isize, self.stride as isize, self.padding as isize);
        let mut y = vec![0.0f32; n * c * oh * ow];
        let mut arg = vec![0u32; y.len()];
        let plane = |(src, (ys, args)): (&[f32], (&mut [f32], &mut [u32]))| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut best, mut at) = (f32::NEG_INFINITY, u32::MAX);
                    for p in 0..k {
                        let iy = oy as isize * s + p - pad;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for q in 0..k {
                            let ix = ox as isize * s + q - pad;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let idx = iy as usize * w + ix as usize;
                            // a NaN is taken, and then propagates as in PyTorch
                            if at == u32::MAX || src[idx] > best || src[idx].is_nan() {
                                best = src[idx];
                                at = idx as u32;
                            }
                        }
                    }
                    ys[oy * ow + ox] = best;
                    args[oy * ow + ox] = at;
                }
            }
        };
        let (ip, op) = (h * w, (oh * ow).max(1));
        if x.len() >= PAR_MIN {
            x.data
                .par_chunks(ip)
                .zip(y.par_chunks_mut(op).zip(arg.par_chunks_mut(op)))
                .for_each(plane);
        } else {
            x.data.chunks(ip).zip(y.chunks_mut(op).zip(arg.chunks_mut(op))).for_each(plane);
        }
        if train {
            self.cache = Some((x.shape.clone(), arg));
        }
        Tensor::new(vec![n, c, oh, ow], y)
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let (shape, arg) =
            self.cache.take().expect("max-pool: backward without a training forward");
        assert_eq!(dy.len(), arg.len(), "max-pool backward: gradient shape");
        let ip = shape[2] * shape[3];
        let op = (dy.len() / (shape[0] * shape[1]).max(1)).max(1);
        let mut dx = vec![0.0f32; shape.iter().product()];
        let plane = |(d, (g, a)): (&mut [f32], (&[f32], &[u32]))| {
            for (&gv, &av) in g.iter().zip(a) {
                d[av as usize] += gv;
            }
        };
        if dx.len() >= PAR_MIN {
            dx.par_chunks_mut(ip)
                .zip(dy.data.par_chunks(op).zip(arg.par_chunks(op)))
                .for_each(plane);
        } else {
            dx.chunks_mut(ip).zip(dy.data.chunks(op).zip(arg.chunks(op))).for_each(plane);
        }
        Tensor::new(shape, dx)
    }
}

/// Mean over the spatial axes: `[N, C, H, W] -> [N, C]`.
#[derive(Default)]
pub struct GlobalAvgPool {
    shape: Option<Vec<usize>>,
}

impl GlobalAvgPool {
    /// A global average pool.
    pub fn new() -> GlobalAvgPool {
        GlobalAvgPool::default()
    }
}

impl Module for GlobalAvgPool {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

impl Layer for GlobalAvgPool {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let (n, c, h, w) = x.dims4("global average pool input").unwrap_or_else(|e| panic!("{e:#}"));
        let s = h * w;
        assert!(s > 0, "global average pool of an empty {h}x{w} plane");
        let mean = |p: &[f32]| p.iter().sum::<f32>() / s as f32;
        // in parallel when large (on one thread, the others waited on it)
        let y = if x.len() >= PAR_MIN {
            x.data.par_chunks(s).map(mean).collect()
        } else {
            x.data.chunks(s).map(mean).collect()
        };
        if train {
            self.shape = Some(x.shape.clone());
        }
        Tensor::new(vec![n, c], y)
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let shape =
            self.shape.take().expect("global average pool: backward without a training forward");
        assert_eq!(dy.shape, shape[..2], "global average pool backward: gradient shape");
        let s = shape[2] * shape[3];
        let inv = 1.0 / s as f32;
        let mut dx: Vec<f32> = Vec::with_capacity(dy.len() * s);
        let out = &mut dx.spare_capacity_mut()[..dy.len() * s];
        let fill = |(p, &g): (&mut [std::mem::MaybeUninit<f32>], &f32)| {
            p.iter_mut().for_each(|v| _ = v.write(g * inv));
        };
        if out.len() >= PAR_MIN {
            out.par_chunks_mut(s).zip(dy.data.par_iter()).for_each(fill);
        } else {
            out.chunks_mut(s).zip(&dy.data).for_each(fill);
        }
        // SAFETY: the chunks of `s` cover all dy.len()·s values, each written above
        unsafe { dx.set_len(dy.len() * s) };
        Tensor::new(shape, dx)
    }
}

/// Flattens all axes after the first: `[N, ...] -> [N, D]`.
#[derive(Default)]
pub struct Flatten {
    shape: Option<Vec<usize>>,
}

impl Flatten {
    /// A flatten.
    pub fn new() -> Flatten {
        Flatten::default()
    }
}

impl Module for Flatten {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

impl Layer for Flatten {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        assert!(!x.shape.is_empty(), "flatten of a 0-d tensor");
        if train {
            self.shape = Some(x.shape.clone());
        }
        Tensor::new(vec![x.shape[0], x.shape[1..].iter().product()], x.data.clone())
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let shape = self.shape.take().expect("flatten: backward without a training forward");
        Tensor::new(shape, dy.data.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::{check_layer, random};
    use crate::kit::Sequential;

    /// `y = 0.01·x + offset`, with offsets a permutation of multiples of 0.1: the max of any
    /// window is then separated from the runner-up by far more than the finite-difference step,
    /// so max-pool is differentiable at every point the check visits.
    struct Spread;
    impl Module for Spread {
        fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
    }
    impl Layer for Spread {
        fn forward(&mut self, x: &Tensor, _train: bool) -> Tensor {
            let n = x.len();
            let y = x
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| 0.01 * v + ((i * 7919) % n) as f32 * 0.1)
                .collect();
            Tensor::new(x.shape.clone(), y)
        }
        fn backward(&mut self, dy: &Tensor) -> Tensor {
            Tensor::new(dy.shape.clone(), dy.data.iter().map(|v| 0.01 * v).collect())
        }
    }

    fn direct_max(x: &Tensor, k: usize, s: usize, pad: usize) -> Tensor {
        let (n, c, h, w) = x.dims4("x").unwrap();
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let mut y = Vec::new();
        for i in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for p in 0..k {
                        for q in 0..k {
                            let (iy, ix) = (
                                (oy * s + p) as isize - pad as isize,
                                (ox * s + q) as isize - pad as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                m = m.max(x.data[i * h * w + iy as usize * w + ix as usize]);
                            }
                        }
                    }
                    y.push(m);
                }
            }
        }
        Tensor::new(vec![n, c, oh, ow], y)
    }

    #[test]
    fn max_pool_matches_direct_formula() {
        for (shape, k, s, pad) in [
            ([2, 3, 6, 6], 2, 2, 0),
            ([1, 2, 7, 5], 3, 2, 1),
            ([2, 1, 5, 8], 3, 1, 1),
            ([3, 2, 4, 4], 1, 1, 0),
        ] {
            let x = random(&shape, 3);
            let y = MaxPool2d::new(k, s, pad).forward(&x, false);
            assert_eq!(y, direct_max(&x, k, s, pad), "{shape:?} k{k} s{s} p{pad}");
        }
        // PyTorch: F.max_pool2d(torch.arange(16.).view(1,1,4,4), 3, 2, 1) = [[5, 7], [13, 15]]
        let x = Tensor::new(vec![1, 1, 4, 4], (0..16).map(|v| v as f32).collect());
        assert_eq!(MaxPool2d::new(3, 2, 1).forward(&x, false).data, vec![5., 7., 13., 15.]);
    }

    #[test]
    fn max_pool_gradients_match_finite_differences() {
        for (shape, k, s, pad) in
            [([2, 2, 6, 6], 2, 2, 0), ([1, 2, 7, 5], 3, 2, 1), ([2, 1, 5, 6], 3, 1, 1)]
        {
            let mut net = Sequential::new().push(Spread).push(MaxPool2d::new(k, s, pad));
            check_layer(&mut net, &shape, 30, 1e-2);
        }
    }

    #[test]
    fn global_avg_pool_is_the_plane_mean() {
        let x = random(&[2, 3, 4, 5], 1);
        let y = GlobalAvgPool::new().forward(&x, false);
        assert_eq!(y.shape, vec![2, 3]);
        for (i, v) in y.data.iter().enumerate() {
            let want = x.data[i * 20..(i + 1) * 20].iter().sum::<f32>() / 20.0;
            assert!((v - want).abs() < 1e-6);
        }
        check_layer(&mut GlobalAvgPool::new(), &[2, 3, 4, 5], 2, 1e-2);
        check_layer(&mut GlobalAvgPool::new(), &[1, 2, 3, 1], 3, 1e-2);
    }

    #[test]
    fn flatten_reshapes_both_ways() {
        let x = random(&[2, 3, 2, 2], 4);
        let mut f = Flatten::new();
        let y = f.forward(&x, true);
        assert_eq!(y.shape, vec![2, 12]);
        assert_eq!(y.data, x.data);
        check_layer(&mut Flatten::new(), &[3, 2, 1, 4], 5, 1e-2);
    }
}
