//! [`Tensor`]: the kit's plain, owned, row-major f32 tensor, and its conversion to and from
//! the ABI's [`TensorDesc`].

use crate::abi::{Device, TensorDesc};
use anyhow::{bail, Result};

/// A dense row-major f32 tensor with a runtime shape.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and its data; panics if the lengths disagree.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Tensor {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "tensor of shape {shape:?} needs {n} values, got {}", data.len());
        Tensor { shape, data }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Tensor {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when it holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The shape as `[rows, cols]`, or an error naming `what` if it is not 2-d.
    pub fn dims2(&self, what: &str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [a, b] => Ok((a, b)),
            _ => bail!("{what} must be 2-d [N, D], got shape {:?}", self.shape),
        }
    }

    /// The shape as `[N, C, H, W]`, or an error naming `what` if it is not 4-d.
    pub fn dims4(&self, what: &str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => bail!("{what} must be 4-d [N, C, H, W], got shape {:?}", self.shape),
        }
    }

    /// Reads a descriptor, checking that the data length matches the shape and the device is the CPU.
    pub fn from_desc(desc: TensorDesc) -> Result<Tensor> {
        if desc.device != Device::CPU {
            bail!("tensor on device {} but this plugin runs on the cpu", desc.device);
        }
        let shape: Vec<usize> = desc.shape.iter().map(|&d| d as usize).collect();
        let n: usize = shape.iter().product();
        if n != desc.data.len() {
            bail!("tensor of shape {shape:?} needs {n} values but carries {}", desc.data.len());
        }
        Ok(Tensor { shape, data: desc.data.into_vec() })
    }

    /// Converts into a CPU descriptor (no copy).
    pub fn into_desc(self) -> TensorDesc {
        TensorDesc {
            shape: self.shape.iter().map(|&d| d as u64).collect(),
            data: self.data.into(),
            device: Device::CPU,
        }
    }
}
