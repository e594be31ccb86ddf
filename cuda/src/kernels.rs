//! Small kernels shared by the host and plugins, CUDA C compiled by NVRTC at first use
//! ([`Gpu::function`]), and matrix products through cuBLAS.
//!
//! Row-major `[N, D]` throughout. The batch-norm kernels follow `latent_sdk::kit::BatchNorm`
//! exactly (biased variance in the normalisation, unbiased in the running variance,
//! PyTorch's ε and momentum), so that the CUDA and CPU paths can be compared.

use crate::{DeviceError, Doing, Gpu};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig};
use std::sync::Arc;

/// The CUDA C source of module `elementwise`.
pub const ELEMENTWISE: &str = r#"
extern "C" __global__ void add_bias_rows(float* y, const float* b, int n, int d) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n * d) y[i] += b[i % d];
}
extern "C" __global__ void relu_fwd(float* y, int len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
}
// g := g where the ReLU's output y was positive, else 0
extern "C" __global__ void relu_bwd(float* g, const float* y, int len) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) g[i] = y[i] > 0.0f ? g[i] : 0.0f;
}
// out[j] += sum_i x[i, j]: one thread a column, rows in order (the CPU's order)
extern "C" __global__ void col_sum_acc(float* out, const float* x, int n, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += x[(long)i * d + j];
    out[j] += s;
}
// training batch norm of [N, D] over N, one thread a column, sums in double as the CPU does
extern "C" __global__ void bn_train_fwd(float* y, float* xhat, float* inv_std,
        float* run_mean, float* run_var, const float* x, const float* gamma,
        const float* beta, int n, int d, float eps, float momentum) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    double s = 0.0, s2 = 0.0;
    for (int i = 0; i < n; ++i) { double v = x[(long)i * d + j]; s += v; s2 += v * v; }
    double mean = s / n;
    double var = s2 / n - mean * mean;
    if (var < 0.0) var = 0.0;
    float inv = 1.0f / sqrtf((float)var + eps);
    inv_std[j] = inv;
    float m = (float)mean;
    for (int i = 0; i < n; ++i) {
        long k = (long)i * d + j;
        float h = (x[k] - m) * inv;
        xhat[k] = h;
        y[k] = gamma[j] * h + beta[j];
    }
    double unbiased = n > 1 ? var * n / (n - 1) : var;
    run_mean[j] = (1.0f - momentum) * run_mean[j] + momentum * m;
    run_var[j] = (1.0f - momentum) * run_var[j] + momentum * (float)unbiased;
}
extern "C" __global__ void bn_eval_fwd(float* y, const float* x, const float* run_mean,
        const float* run_var, const float* gamma, const float* beta, int n, int d, float eps) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * d) return;
    int j = i % d;
    y[i] = gamma[j] * (x[i] - run_mean[j]) / sqrtf(run_var[j] + eps) + beta[j];
}
// dx = gamma inv_std (dy - mean(dy) - xhat mean(dy xhat)); dgamma += sum dy xhat; dbeta += sum dy
extern "C" __global__ void bn_train_bwd(float* dx, float* dgamma, float* dbeta,
        const float* dy, const float* xhat, const float* inv_std, const float* gamma,
        int n, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    double sdy = 0.0, sdyx = 0.0;
    for (int i = 0; i < n; ++i) { long k = (long)i * d + j; sdy += dy[k]; sdyx += (double)dy[k] * xhat[k]; }
    dgamma[j] += (float)sdyx;
    dbeta[j] += (float)sdy;
    float mdy = (float)(sdy / n), mdyx = (float)(sdyx / n);
    float sc = gamma[j] * inv_std[j];
    for (int i = 0; i < n; ++i) {
        long k = (long)i * d + j;
        dx[k] = sc * (dy[k] - mdy - xhat[k] * mdyx);
    }
}
"#;

/// One thread per element, in blocks of 256.
pub fn grid(len: usize) -> LaunchConfig {
    let len = len.max(1) as u32;
    LaunchConfig {
        grid_dim: (len.div_ceil(256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn dim(v: usize, what: &str) -> Result<i32, DeviceError> {
    i32::try_from(v).map_err(|_| DeviceError(format!("{what} = {v} is too large for a kernel")))
}

/// Launches `$name` of [`ELEMENTWISE`] over `$len` threads.
macro_rules! launch {
    ($self:ident, $name:literal, $len:expr, [$($arg:expr),* $(,)?]) => {
        $crate::launch!($self.gpu, "elementwise", ELEMENTWISE, $name, grid($len), [$($arg),*])
    };
}

/// The kernels of [`ELEMENTWISE`] and cuBLAS, on one device.
pub struct Ops {
    gpu: Arc<Gpu>,
    blas: CudaBlas,
}

impl Ops {
    /// cuBLAS on `gpu`'s stream.
    pub fn new(gpu: Arc<Gpu>) -> Result<Ops, DeviceError> {
        let blas = CudaBlas::new(gpu.stream().clone()).doing("creating the cuBLAS handle")?;
        Ok(Ops { gpu, blas })
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// `c[m, n] = beta·c + a[m, k] · op(b)`, row-major, where `op(b)` is `b[k, n]`, or
    /// `b[n, k]ᵀ` with `b_t`; `a_t` likewise reads `a` as `[k, m]ᵀ`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: &CudaSlice<f32>,
        a_t: bool,
        b: &CudaSlice<f32>,
        b_t: bool,
        beta: f32,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), DeviceError> {
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: swap the operands and m, n.
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let cfg = GemmConfig {
            transa: op(b_t),
            transb: op(a_t),
            m: dim(n, "n")?,
            n: dim(m, "m")?,
            k: dim(k, "k")?,
            alpha: 1.0f32,
            lda: dim(if b_t { k } else { n }, "b's leading dimension")?,
            ldb: dim(if a_t { m } else { k }, "a's leading dimension")?,
            beta,
            ldc: dim(n, "ldc")?,
        };
        // SAFETY: the leading dimensions above describe dense row-major buffers of the sizes
        // the caller passes.
        unsafe { self.blas.gemm(cfg, b, a, c) }.doing("cuBLAS sgemm")
    }

    /// `y[n, d] += b[d]` on every row.
    pub fn add_bias_rows(
        &self,
        y: &mut CudaSlice<f32>,
        b: &CudaSlice<f32>,
        n: usize,
        d: usize,
    ) -> Result<(), DeviceError> {
        let (ni, di) = (dim(n, "n")?, dim(d, "d")?);
        launch!(self, "add_bias_rows", n * d, [y, b, &ni, &di])
    }

    /// `y := max(y, 0)` on the first `len` values.
    pub fn relu(&self, y: &mut CudaSlice<f32>, len: usize) -> Result<(), DeviceError> {
        let li = dim(len, "len")?;
        launch!(self, "relu_fwd", len, [y, &li])
    }

    /// `g := g` where `y > 0`, else 0 (the backward of a ReLU whose output was `y`).
    pub fn relu_backward(
        &self,
        g: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        len: usize,
    ) -> Result<(), DeviceError> {
        let li = dim(len, "len")?;
        launch!(self, "relu_bwd", len, [g, y, &li])
    }

    /// `out[j] += Σ_i x[i, j]`.
    pub fn col_sum_acc(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        n: usize,
        d: usize,
    ) -> Result<(), DeviceError> {
        let (ni, di) = (dim(n, "n")?, dim(d, "d")?);
        launch!(self, "col_sum_acc", d, [out, x, &ni, &di])
    }

    /// Training batch norm of `x[n, d]` over `n`: `y`, and `xhat`, `inv_std` for the backward;
    /// updates the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_train(
        &self,
        y: &mut CudaSlice<f32>,
        xhat: &mut CudaSlice<f32>,
        inv_std: &mut CudaSlice<f32>,
        stats: (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        x: &CudaSlice<f32>,
        affine: (&CudaSlice<f32>, &CudaSlice<f32>),
        (n, d): (usize, usize),
        (eps, momentum): (f32, f32),
    ) -> Result<(), DeviceError> {
        let (ni, di) = (dim(n, "n")?, dim(d, "d")?);
        launch!(
            self,
            "bn_train_fwd",
            d,
            [y, xhat, inv_std, stats.0, stats.1, x, affine.0, affine.1, &ni, &di, &eps, &momentum]
        )
    }

    /// Evaluation batch norm with the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_eval(
        &self,
        y: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        stats: (&CudaSlice<f32>, &CudaSlice<f32>),
        affine: (&CudaSlice<f32>, &CudaSlice<f32>),
        (n, d): (usize, usize),
        eps: f32,
    ) -> Result<(), DeviceError> {
        let (ni, di) = (dim(n, "n")?, dim(d, "d")?);
        launch!(
            self,
            "bn_eval_fwd",
            n * d,
            [y, x, stats.0, stats.1, affine.0, affine.1, &ni, &di, &eps]
        )
    }

    /// The training batch norm's backward: `dx`, and `dgamma`, `dbeta` accumulated.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_train_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        grads: (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        dy: &CudaSlice<f32>,
        xhat: &CudaSlice<f32>,
        inv_std: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        (n, d): (usize, usize),
    ) -> Result<(), DeviceError> {
        let (ni, di) = (dim(n, "n")?, dim(d, "d")?);
        launch!(self, "bn_train_bwd", d, [dx, grads.0, grads.1, dy, xhat, inv_std, gamma, &ni, &di])
    }
}
