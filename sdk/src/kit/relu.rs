//! Rectified linear unit: `y = max(x, 0)`; backward passes `dy` where `x > 0`.

use super::{Layer, Module, Param, Tensor};

/// ReLU, any shape.
#[derive(Default)]
pub struct Relu {
    mask: Vec<bool>,
}

impl Relu {
    /// A ReLU.
    pub fn new() -> Relu {
        Relu::default()
    }
}

impl Module for Relu {
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

impl Layer for Relu {
    fn forward(&mut self, x: &Tensor, train: bool) -> Tensor {
        if train {
            self.mask = x.data.iter().map(|&v| v > 0.0).collect();
        }
        Tensor::new(x.shape.clone(), x.data.iter().map(|&v| v.max(0.0)).collect())
    }

    fn backward(&mut self, dy: &Tensor) -> Tensor {
        assert_eq!(dy.len(), self.mask.len(), "relu backward: gradient length");
        let data = dy.data.iter().zip(&self.mask).map(|(&d, &m)| if m { d } else { 0.0 }).collect();
        Tensor::new(dy.shape.clone(), data)
    }
}
