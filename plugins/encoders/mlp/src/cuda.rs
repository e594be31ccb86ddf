//! The `mlp` on a CUDA device: the same layers as the CPU path, with cuBLAS products and the
//! batch-norm and ReLU kernels of `latent_cuda::kernels`. Parameters and their gradients live
//! on the device; the `Param`s on the host are copies, filled when the SDK reads them.

use latent_cuda::cudarc::driver::CudaSlice;
use latent_cuda::kernels::Ops;
use latent_cuda::{DeviceError, Gpu, OnParam, ParamBuffers};
use latent_sdk::abi::{DeviceBinding, DeviceParam, DeviceTensorDesc};
use latent_sdk::prelude::*;
use std::sync::Arc;

/// One hidden layer's parameter indices (in `visit_params` order) and saved activations.
struct Hidden {
    d_in: usize,
    d_out: usize,
    weight: usize,
    bias: Option<usize>,
    /// γ, β, running mean, running variance.
    bn: Option<[usize; 4]>,
    /// The layer's input (for dW), the batch norm's x̂ and 1/σ, the ReLU's output.
    input: Option<Act>,
    xhat: Option<CudaSlice<f32>>,
    inv_std: Option<CudaSlice<f32>>,
    out: Option<Act>,
}

/// The network on the device.
pub struct OnGpu {
    ops: Ops,
    p: ParamBuffers,
    hidden: Vec<Hidden>,
    out_weight: usize,
    out_bias: usize,
    out_dim: usize,
    /// The output layer's input, the features returned last.
    last_input: Option<Act>,
    features: Option<CudaSlice<f32>>,
    pending: Option<usize>,
    /// Values per image the network was built for.
    input: usize,
}

/// An activation kept for the backward, shared where one layer's output is the next's input.
type Act = Arc<CudaSlice<f32>>;

fn err(e: DeviceError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl OnGpu {
    /// Binds to the host's device and copies the parameters there. `layers` is
    /// (input size, output size, has bias, has batch norm) of each hidden layer.
    pub fn new(
        binding: &DeviceBinding,
        net: &mut dyn Module,
        input: usize,
        layers: &[(usize, usize, bool, bool)],
        out_dim: usize,
    ) -> anyhow::Result<OnGpu> {
        // SAFETY: the binding comes from the host, which keeps its device open for its life.
        let gpu = Arc::new(unsafe { Gpu::from_binding(binding) }.map_err(err)?);
        let p = ParamBuffers::upload(&gpu, &mut |f| {
            net.visit_params(&mut |q| f(&mut q.value, &mut q.grad))
        })
        .map_err(err)?;
        let mut at = 0;
        let mut take = |k: usize| {
            let i = at;
            at += k;
            i
        };
        let hidden = layers
            .iter()
            .map(|&(d_in, d_out, bias, bn)| Hidden {
                d_in,
                d_out,
                weight: take(1),
                bias: bias.then(|| take(1)),
                bn: bn.then(|| {
                    let i = take(4);
                    [i, i + 1, i + 2, i + 3]
                }),
                input: None,
                xhat: None,
                inv_std: None,
                out: None,
            })
            .collect();
        let out_weight = take(1);
        let out_bias = take(1);
        ensure!(
            out_bias + 1 == p.count(),
            "mlp: {} parameters on the device, the layers name {}",
            p.count(),
            out_bias + 1
        );
        Ok(OnGpu {
            ops: Ops::new(gpu),
            p,
            hidden,
            out_weight,
            out_bias,
            out_dim,
            last_input: None,
            features: None,
            pending: None,
            input,
        })
    }

    fn gpu(&self) -> &Gpu {
        self.ops.gpu()
    }

    /// Images `[N, C, H, W]` on the device to features `[N, out_dim]` there.
    pub fn forward(
        &mut self,
        images: &DeviceTensorDesc,
        train: bool,
    ) -> anyhow::Result<DeviceTensorDesc> {
        let n = *images.shape.first().context("images with no shape")? as usize;
        ensure!(n >= 1, "an empty batch");
        ensure!(
            images.len() == n * self.input,
            "mlp was built for images of {} values, got {:?}",
            self.input,
            images.shape.as_slice()
        );
        // an evaluation forward ends any training forward's wait for its backward
        self.pending = None;
        self.last_input = None;
        ensure!(
            !train || n >= 2 || self.hidden.iter().all(|h| h.bn.is_none()),
            "training with batch norm needs at least 2 images per batch, got {n}"
        );
        // SAFETY: the host owns the images for this call.
        let x = unsafe { self.gpu().borrow(images) }.map_err(err)?;
        // The first layer's input is kept for dW: a copy, as the host reuses its buffer.
        let mut h0 = self.gpu().zeros(images.len()).map_err(err)?;
        self.gpu()
            .stream()
            .memcpy_dtod(&x.slice(0..images.len()), &mut h0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // each layer's output is the next one's input, kept once for both backward uses
        let mut h: Act = Arc::new(h0);
        for i in 0..self.hidden.len() {
            let (d_in, d_out) = (self.hidden[i].d_in, self.hidden[i].d_out);
            let mut z = self.gpu().zeros(n * d_out).map_err(err)?;
            let l = &self.hidden[i];
            self.ops
                .gemm((n, d_out, d_in), &h, false, &self.p.values[l.weight], true, 0.0, &mut z)
                .map_err(err)?;
            if let Some(b) = l.bias {
                self.ops.add_bias_rows(&mut z, &self.p.values[b], n, d_out).map_err(err)?;
            }
            let mut y = if let Some([g, be, rm, rv]) = l.bn {
                let mut y = self.gpu().zeros(n * d_out).map_err(err)?;
                if train {
                    let mut xhat = self.gpu().zeros(n * d_out).map_err(err)?;
                    let mut inv = self.gpu().zeros(d_out).map_err(err)?;
                    debug_assert!(be == g + 1 && rm == g + 2 && rv == g + 3);
                    let [gv, bv, mv, vv] = &mut self.p.values[g..g + 4] else {
                        unreachable!("four batch-norm parameters")
                    };
                    self.ops
                        .bn_train(
                            &mut y,
                            &mut xhat,
                            &mut inv,
                            (mv, vv),
                            &z,
                            (gv, bv),
                            (n, d_out),
                            (1e-5, 0.1),
                        )
                        .map_err(err)?;
                    self.hidden[i].xhat = Some(xhat);
                    self.hidden[i].inv_std = Some(inv);
                } else {
                    let v = &self.p.values;
                    self.ops
                        .bn_eval(&mut y, &z, (&v[rm], &v[rv]), (&v[g], &v[be]), (n, d_out), 1e-5)
                        .map_err(err)?;
                }
                y
            } else {
                z
            };
            self.ops.relu(&mut y, n * d_out).map_err(err)?;
            let input = std::mem::replace(&mut h, Arc::new(y));
            if train {
                self.hidden[i].input = Some(input);
                self.hidden[i].out = Some(h.clone());
            }
        }
        let d_last = h.len() / n;
        let mut f = self.gpu().zeros(n * self.out_dim).map_err(err)?;
        let (w, b) = (&self.p.values[self.out_weight], &self.p.values[self.out_bias]);
        self.ops.gemm((n, self.out_dim, d_last), &h, false, w, true, 0.0, &mut f).map_err(err)?;
        self.ops.add_bias_rows(&mut f, b, n, self.out_dim).map_err(err)?;
        let desc = self.gpu().desc(&f, &[n, self.out_dim]);
        self.features = Some(f);
        if train {
            self.last_input = Some(h);
            self.pending = Some(n);
        }
        Ok(desc)
    }

    /// Accumulates the gradients for d loss / d features of the last training forward.
    pub fn backward(&mut self, grad: &DeviceTensorDesc) -> anyhow::Result<()> {
        let n = self.pending.take().context("backward without a training forward before it")?;
        let want = [n as u64, self.out_dim as u64];
        ensure!(
            grad.shape.as_slice() == want,
            "feature gradient has shape {:?}, the last training forward gave {want:?}",
            grad.shape.as_slice()
        );
        // SAFETY: the host owns the gradient for this call.
        let g = unsafe { self.gpu().borrow(grad) }.map_err(err)?;
        let h = self.last_input.take().context("no saved input")?;
        let d_last = h.len() / n;
        let (ow, ob, od) = (self.out_weight, self.out_bias, self.out_dim);
        self.ops
            .gemm((od, d_last, n), &g, true, &h, false, 1.0, &mut self.p.grads[ow])
            .map_err(err)?;
        self.ops.col_sum_acc(&mut self.p.grads[ob], &g, n, od).map_err(err)?;
        if self.hidden.is_empty() {
            return Ok(());
        }
        let mut dh = self.gpu().zeros(n * d_last).map_err(err)?;
        self.ops
            .gemm((n, d_last, od), &g, false, &self.p.values[ow], false, 0.0, &mut dh)
            .map_err(err)?;
        for i in (0..self.hidden.len()).rev() {
            let l = &mut self.hidden[i];
            let (d_in, d_out) = (l.d_in, l.d_out);
            let out = l.out.take().context("no saved output")?;
            let input = l.input.take().context("no saved input")?;
            self.ops.relu_backward(&mut dh, &out, n * d_out).map_err(err)?;
            let dz = if let Some([g_, b_, _, _]) = l.bn {
                let xhat = l.xhat.take().context("no saved x̂")?;
                let inv = l.inv_std.take().context("no saved 1/σ")?;
                let mut dz = self.gpu().zeros(n * d_out).map_err(err)?;
                let (lo, hi) = self.p.grads.split_at_mut(b_);
                self.ops
                    .bn_train_backward(
                        &mut dz,
                        (&mut lo[g_], &mut hi[0]),
                        &dh,
                        &xhat,
                        &inv,
                        &self.p.values[g_],
                        (n, d_out),
                    )
                    .map_err(err)?;
                dz
            } else {
                dh
            };
            let l = &self.hidden[i];
            if let Some(b) = l.bias {
                self.ops.col_sum_acc(&mut self.p.grads[b], &dz, n, d_out).map_err(err)?;
            }
            let w = l.weight;
            self.ops
                .gemm((d_out, d_in, n), &dz, true, &input, false, 1.0, &mut self.p.grads[w])
                .map_err(err)?;
            dh = self.gpu().zeros(n * d_in).map_err(err)?;
            if i > 0 {
                self.ops
                    .gemm((n, d_in, d_out), &dz, false, &self.p.values[w], false, 0.0, &mut dh)
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// Every parameter's value and gradient buffer, in `visit_params` order (flat shapes).
    pub fn device_params(&self) -> Vec<DeviceParam> {
        self.p.descs(self.gpu())
    }

    /// Copies the device's values into the `Param`s.
    pub fn values_to_host(&self, net: &mut dyn Module) -> anyhow::Result<()> {
        self.p.values_to_host(self.gpu(), &mut visit(net)).map_err(err)
    }

    /// Copies the `Param`s' values to the device.
    pub fn values_to_device(&mut self, net: &mut dyn Module) -> anyhow::Result<()> {
        let gpu = self.ops.gpu().clone();
        self.p.values_to_device(&gpu, &mut visit(net)).map_err(err)
    }

    /// Adds the device's gradients into the `Param`s' and zeroes them on the device.
    pub fn grads_to_host(&mut self, net: &mut dyn Module) -> anyhow::Result<()> {
        let gpu = self.ops.gpu().clone();
        self.p.grads_to_host(&gpu, &mut visit(net)).map_err(err)
    }
}

/// `net`'s parameters as (values, gradient) pairs, for [`ParamBuffers`].
fn visit(net: &mut dyn Module) -> impl FnMut(OnParam<'_>) + '_ {
    move |f| net.visit_params(&mut |q| f(&mut q.value, &mut q.grad))
}
