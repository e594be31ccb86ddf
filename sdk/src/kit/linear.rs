//! Fully connected layer: `y = x · Wᵀ + b`.
//!
//! # Shapes
//! x `[N, in]`, W `[out, in]` (PyTorch layout), b `[out]`, y `[N, out]`.
//!
//! Backward: `dW += dyᵀ · x`, `db += Σₙ dy`, `dx = dy · W`.

use super::ops::{matmul, Mat};
use super::{Init, Layer, Module, Param, Tensor};

/// A linear layer with optional bias; initialised as PyTorch's `nn.Linear`.
pub struct Linear {
    /// `[out, in]`.
    pub weight: Param,
    /// `[out]`.
    pub bias: Option<Param>,
    input: Option<Tensor>,
}

impl Linear {
    /// `in_dim -> out_dim`, parameters named `<prefix>.weight` and `<prefix>.bias`.
    pub fn new(init: &Init, in_dim: usize, out_dim: usize, bias: bool) -> Linear {
        let weight = init.kaiming_uniform("weight", vec![out_dim, in_dim], in_dim);
        let bias = bias.then(|| {
            let mut b = init.kaiming_uniform("bias", vec![out_dim], in_dim);
            b.role = crate::abi::ParamRole::NoDecay;
            b
        });
        Linear { weight, bias, input: None }
    }

    /// Input and output sizes.
    pub fn dims(&self) -> (usize, usize) {
        (self.weight.shape[1], self.weight.shape[0])
    }
}

impl Module for Linear {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
}

impl Layer for Linear {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let (i, o) = self.dims();
        let n = x.len() / i.max(1);
        assert_eq!(x.shape.last(), Some(&i), "linear expects [N, {i}], got {:?}", x.shape);
        let mut y = vec![0.0; n * o];
        if let Some(b) = &self.bias {
            for row in y.chunks_mut(o) {
                row.copy_from_slice(&b.value);
            }
        }
        matmul(
            Mat::new(&x.data, n, i),
            Mat::new(&self.weight.value, o, i).t(),
            &mut y,
            self.bias.is_some(),
        );
        if train {
            self.input = Some(x.clone());
        }
        Tensor::new(vec![n, o], y)
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let x = self.input.take().expect("linear: backward without a training forward");
        let (i, o) = self.dims();
        let n = x.len() / i.max(1);
        assert_eq!(dy.shape, vec![n, o], "linear backward: gradient shape");
        matmul(Mat::new(&dy.data, n, o).t(), Mat::new(&x.data, n, i), &mut self.weight.grad, true);
        if let Some(b) = &mut self.bias {
            for row in dy.data.chunks(o) {
                for (g, d) in b.grad.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        let mut dx = vec![0.0; n * i];
        matmul(Mat::new(&dy.data, n, o), Mat::new(&self.weight.value, o, i), &mut dx, false);
        Tensor::new(x.shape.clone(), dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kit::gradcheck::check_layer;

    #[test]
    fn forward_is_x_wt_plus_b() {
        let init = Init::new(1);
        let mut l = Linear::new(&init, 3, 2, true);
        l.weight.value = vec![1., 2., 3., 4., 5., 6.];
        l.bias.as_mut().unwrap().value = vec![0.5, -1.0];
        let y = l.forward(&Tensor::new(vec![1, 3], vec![1., 0., -1.]), false);
        assert_eq!(y.data, vec![1. - 3. + 0.5, 4. - 6. - 1.]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut l = Linear::new(&Init::new(3).pp("fc"), 5, 4, true);
        check_layer(&mut l, &[3, 5], 7, 1e-2);
        let mut l = Linear::new(&Init::new(4), 6, 2, false);
        check_layer(&mut l, &[1, 6], 8, 1e-2);
    }
}
