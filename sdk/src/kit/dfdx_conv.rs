//! The kit's [`Conv2d`] kernels as a dfdx custom op, for code that builds models with dfdx's
//! tape-based autodiff on the CPU.
//!
//! ```text
//! y = conv2d(x [N, C, H, W], w [O, C/groups, kh, kw]; stride, padding, groups)   (no bias)
//! backward: dx += conv2d_backward_data(dy, w),  dw += conv2d_backward_weight(dy, x)
//! ```
//! The op splits the tapes off both inputs (`split_tape`), merges them, runs the kit's im2col
//! forward, and records one backward closure (`Tape::add_backward_op`) that reads `dy` from
//! the gradients by the output's ghost and adds into `dx` and `dw`
//! (`Gradients::get_or_alloc_mut`), before putting the tape on the output (`put_tape`).

use super::{Conv2d, Conv2dConfig, Init, Layer, Tensor};
use dfdx::shapes::HasShape;
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, TensorFromVec};

/// A runtime-shaped 4-d dfdx tensor on the CPU.
pub type Dfdx4<T> = dfdx::tensor::Tensor<(usize, usize, usize, usize), f32, Cpu, T>;

/// `conv2d(x, w)` with the kit's kernels, recorded on the merged tape of `x` and `w`.
pub fn conv2d<T, R>(x: Dfdx4<T>, w: Dfdx4<R>, stride: usize, padding: usize, groups: usize) -> Dfdx4<T>
where
    T: Tape<f32, Cpu> + Merge<R>,
    R: Tape<f32, Cpu>,
{
    let (x, tx) = x.split_tape();
    let (w, tw) = w.split_tape();
    let mut tape = tx.merge(tw);
    let (n, c, h, wd) = *x.shape();
    let (o, cg, kh, kw) = *w.shape();
    assert_eq!(c, cg * groups, "conv2d: input has {c} channels, weight expects {} ({groups} groups)", cg * groups);
    let cfg = Conv2dConfig { stride, padding, groups, bias: false };
    let mut conv = Conv2d::rect(&Init::new(0), c, o, kh, kw, cfg);
    conv.weight.value = w.as_vec();
    let y = conv.forward(&Tensor::new(vec![n, c, h, wd], x.as_vec()), T::OWNS_TAPE);
    let out_shape = (y.shape[0], y.shape[1], y.shape[2], y.shape[3]);
    let y = x.device().tensor_from_vec(y.data, out_shape);
    let (xg, wg, yg) = (x.ghost(), w.ghost(), y.ghost());
    tape.add_backward_op(move |grads| {
        let dy = grads.get_or_alloc_mut(&yg)?.to_vec();
        let dx = conv.backward(&Tensor::new(vec![out_shape.0, out_shape.1, out_shape.2, out_shape.3], dy));
        let gx = grads.get_or_alloc_mut(&xg)?;
        gx.iter_mut().zip(&dx.data).for_each(|(a, b)| *a += b);
        let gw = grads.get_or_alloc_mut(&wg)?;
        gw.iter_mut().zip(&conv.weight.grad).for_each(|(a, b)| *a += b);
        Ok(())
    });
    y.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::random;
    use dfdx::prelude::{Backward, SumTo, Trace};

    /// L = Σ conv2d(x, w) ⊙ r, computed with the kit in f64.
    fn loss(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], r: &[f32], cfg: Conv2dConfig) -> f64 {
        let mut conv = Conv2d::rect(&Init::new(0), xs[1], ws[0], ws[2], ws[3], cfg);
        conv.weight.value = w.to_vec();
        let y = conv.forward(&Tensor::new(xs.to_vec(), x.to_vec()), false);
        y.data.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn dfdx_conv_gradients_match_finite_differences() {
        let dev: Cpu = Default::default();
        for (xs, ws, stride, padding, groups) in [([2, 3, 5, 4], [4, 3, 3, 3], 1, 1, 1), ([1, 4, 6, 5], [2, 2, 3, 2], 2, 1, 2)] {
            let xv = random(&xs, 1).data;
            let wv = random(&ws, 2).data;
            let x = dev.tensor_from_vec(xv.clone(), (xs[0], xs[1], xs[2], xs[3]));
            let w = dev.tensor_from_vec(wv.clone(), (ws[0], ws[1], ws[2], ws[3]));
            let y = conv2d(x.leaky_trace(), w.leaky_trace(), stride, padding, groups);
            let ys = *y.shape();
            let rv = random(&[ys.0, ys.1, ys.2, ys.3], 3).data;
            let r = dev.tensor_from_vec(rv.clone(), ys);
            let grads = (y * r).sum::<(), _>().backward();
            let (gx, gw) = (grads.get(&x).as_vec(), grads.get(&w).as_vec());
            let cfg = Conv2dConfig { stride, padding, groups, bias: false };
            let h = 1e-2f32;
            let num = |which: usize, i: usize| {
                let (mut xp, mut wp) = (xv.clone(), wv.clone());
                let v = if which == 0 { &mut xp[i] } else { &mut wp[i] };
                *v += h;
                let lp = loss(&xp, xs, &wp, ws, &rv, cfg);
                let v = if which == 0 { &mut xp[i] } else { &mut wp[i] };
                *v -= 2.0 * h;
                let lm = loss(&xp, xs, &wp, ws, &rv, cfg);
                (lp - lm) / (2.0 * h as f64)
            };
            for i in 0..xv.len() {
                let n = num(0, i);
                assert!((n - gx[i] as f64).abs() < 1e-3 * (1.0 + n.abs()), "dx[{i}]: {} vs {n}", gx[i]);
            }
            for i in 0..wv.len() {
                let n = num(1, i);
                assert!((n - gw[i] as f64).abs() < 1e-3 * (1.0 + n.abs()), "dw[{i}]: {} vs {n}", gw[i]);
            }
        }
    }
}
