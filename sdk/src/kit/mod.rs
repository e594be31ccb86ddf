//! The plugin kit: fast runtime-shaped kernels with hand-written backward, Caffe-style. Plugin
//! authors reach them through [`crate::autodiff`] (custom ops on the tape); the `resnet`
//! plugin calls them directly.
//!
//! Nothing here crosses the ABI; each plugin library compiles its own copy. Every layer follows
//! one contract ([`Layer`]): `forward(x, train)` keeps what its backward needs, `backward(dy)`
//! returns `dx` and *accumulates* parameter gradients. Each layer is tested alone against a
//! direct formula and against finite differences ([`gradcheck`]).

pub mod batchnorm;
pub mod conv;
pub mod gradcheck;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod linear;
pub mod ops;
pub mod param;
pub mod pool;
pub mod relu;
pub mod simd_gemm;
pub mod tensor;
pub(crate) mod winograd;
pub(crate) mod winograd4;

pub use batchnorm::BatchNorm;
pub use conv::{Conv2d, Conv2dConfig};
pub use linear::Linear;
pub use param::{Init, Module, Param};
pub use pool::{Flatten, GlobalAvgPool, MaxPool2d};
pub use relu::Relu;
pub use tensor::Tensor;

/// The Caffe-style layer contract.
pub trait Layer: Module {
    /// Computes the output; with `train`, remembers what `backward` needs.
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor;
    /// Given d loss / d output of the last training forward, accumulates parameter gradients
    /// and returns d loss / d input.
    fn backward(&mut self, dy: &Tensor) -> Tensor;
}

/// Layers run in order.
#[derive(Default)]
pub struct Sequential {
    /// The layers.
    pub layers: Vec<Box<dyn Layer + Send>>,
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer.
    pub fn push(mut self, layer: impl Layer + Send + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }
}

impl Module for Sequential {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for l in &mut self.layers {
            l.visit_params(f);
        }
    }
}

impl Layer for Sequential {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.clone();
        for l in &mut self.layers {
            h = l.forward(&h, train);
        }
        h
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        let mut g = dy.clone();
        for l in self.layers.iter_mut().rev() {
            g = l.backward(&g);
        }
        g
    }
}
