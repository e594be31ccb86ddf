//! Small kernels shared by the host and plugins, CUDA C compiled by NVRTC at first use
//! ([`Gpu::function`]), and matrix products through cuBLAS.
//!
//! Row-major `[N, D]` throughout. The batch-norm kernels follow `latent_sdk::kit::BatchNorm`
//! exactly (biased variance in the normalisation, unbiased in the running variance,
//! PyTorch's ε and momentum), so that the CUDA and CPU paths can be compared.

use crate::{DeviceError, Doing, Gpu};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, LaunchConfig};
use std::cell::OnceCell;
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
// The host optimizer's updates (host/src/train/optim.rs), in its order of f32 operations (NVRTC
// compiles with --fmad=false, so no multiply-add is fused that the CPU rounds twice). Each
// reads the gradient once and zeroes it, as take_grads would.
extern "C" __global__ void sgd_update(float* w, float* g, float* m, int n, float lr, float mu,
        float wd, int first, int nesterov) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] + wd * w[i];
    float b = first ? gi : mu * m[i] + gi;
    m[i] = b;
    float d = nesterov ? gi + mu * b : b;
    w[i] -= lr * d;
    g[i] = 0.0f;
}
extern "C" __global__ void adamw_update(float* w, float* g, float* m, float* v, int n,
        float lr, float wd, float b1, float b2, float eps, float step, float bc2s) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    w[i] *= 1.0f - lr * wd;
    m[i] = b1 * m[i] + (1.0f - b1) * gi;
    v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
    w[i] -= step * m[i] / (sqrtf(v[i]) / bc2s + eps);
    g[i] = 0.0f;
}
// target := t target + o online (the EMA of a target network)
extern "C" __global__ void ema_update(float* target, const float* online, int n, float t, float o) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) target[i] = t * target[i] + o * online[i];
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

/// cuBLAS's (column-major) arguments for the row-major product `c[m, n] = beta·c + op(a)·op(b)`:
/// a row-major matrix is its transpose in column-major order, so `Cᵀ = op(b)ᵀ·op(a)ᵀ` is asked
/// for, with `b` as cuBLAS's first operand. Called with `(b, a, c)`.
pub fn row_major(
    (m, n, k): (usize, usize, usize),
    a_t: bool,
    b_t: bool,
    beta: f32,
) -> Result<GemmConfig<f32>, DeviceError> {
    let op =
        |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    Ok(GemmConfig {
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
    })
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
    /// Made by the first [`Ops::gemm`]: users of the kernels alone (the optimizer) need none.
    blas: OnceCell<CudaBlas>,
}

impl Ops {
    /// The kernels on `gpu`'s stream.
    pub fn new(gpu: Arc<Gpu>) -> Ops {
        Ops { gpu, blas: OnceCell::new() }
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
        let cfg = row_major((m, n, k), a_t, b_t, beta)?;
        let blas = match self.blas.get() {
            Some(blas) => blas,
            None => {
                let blas =
                    CudaBlas::new(self.gpu.stream().clone()).doing("creating the cuBLAS handle")?;
                self.blas.get_or_init(|| blas)
            }
        };
        // SAFETY: the leading dimensions above describe dense row-major buffers of the sizes
        // the caller passes.
        unsafe { blas.gemm(cfg, b, a, c) }.doing("cuBLAS sgemm")
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

    /// One SGD step of `w` (`n` values) from gradient `g`, which is zeroed, with momentum
    /// buffer `m` (`first`: the buffer is empty, as PyTorch's first step).
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_update(
        &self,
        w: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        n: usize,
        (lr, mu, wd): (f32, f32, f32),
        first: bool,
        nesterov: bool,
    ) -> Result<(), DeviceError> {
        let (ni, fi, ne) = (dim(n, "n")?, first as i32, nesterov as i32);
        launch!(self, "sgd_update", n, [w, g, m, &ni, &lr, &mu, &wd, &fi, &ne])
    }

    /// One AdamW step (`step` = lr / (1 − β₁ᵗ), `bc2s` = √(1 − β₂ᵗ)); `g` is zeroed.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_update(
        &self,
        w: &mut CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        (m, v): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
        n: usize,
        (lr, wd): (f32, f32),
        (b1, b2, eps): (f32, f32, f32),
        (step, bc2s): (f32, f32),
    ) -> Result<(), DeviceError> {
        let ni = dim(n, "n")?;
        launch!(self, "adamw_update", n, [w, g, m, v, &ni, &lr, &wd, &b1, &b2, &eps, &step, &bc2s])
    }

    /// `target := t·target + o·online`.
    pub fn ema(
        &self,
        target: &mut CudaSlice<f32>,
        online: &CudaSlice<f32>,
        n: usize,
        (t, o): (f32, f32),
    ) -> Result<(), DeviceError> {
        let ni = dim(n, "n")?;
        launch!(self, "ema_update", n, [target, online, &ni, &t, &o])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::Emulated;
    use crate::emulate::{assert_close as close, random as data};
    use latent_sdk::kit::{BatchNorm, Init, Layer, Tensor};

    /// cuBLAS's sgemm as its documentation defines it: column-major, `C = α·op(A)·op(B) + β·C`.
    #[allow(clippy::too_many_arguments)]
    fn sgemm_reference(cfg: &GemmConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        let ta = cfg.transa == cublasOperation_t::CUBLAS_OP_T;
        let tb = cfg.transb == cublasOperation_t::CUBLAS_OP_T;
        for j in 0..n {
            for i in 0..m {
                let mut acc = 0.0f32;
                for p in 0..k {
                    let av = if ta { a[p + i * lda] } else { a[i + p * lda] };
                    let bv = if tb { b[j + p * ldb] } else { b[p + j * ldb] };
                    acc += av * bv;
                }
                c[i + j * ldc] = cfg.alpha * acc + cfg.beta * c[i + j * ldc];
            }
        }
    }

    #[test]
    fn the_row_major_gemm_is_the_row_major_product_in_all_four_layouts() {
        let (m, n, k) = (5, 7, 3);
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = data(m * k, 1); // [m, k], or [k, m] when a_t
            let b = data(k * n, 2); // [k, n], or [n, k] when b_t
            let at = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] };
            let bt = |p: usize, j: usize| if b_t { b[j * k + p] } else { b[p * n + j] };
            let c0 = data(m * n, 3);
            let want: Vec<f32> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    0.5 * c0[ij] + (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>()
                })
                .collect();
            let cfg = row_major((m, n, k), a_t, b_t, 0.5).unwrap();
            let mut c = c0.clone();
            // cuBLAS is called with (b, a, c)
            sgemm_reference(&cfg, &b, &a, &mut c);
            close(&c, &want, 1e-6, &format!("a_t {a_t}, b_t {b_t}"));
        }
    }

    type Bn = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut f32,
        *const f32,
        *const f32,
        *const f32,
        i32,
        i32,
        f32,
        f32,
    );
    type BnBack = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *mut f32,
        *mut f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        i32,
        i32,
    );

    #[test]
    fn the_batch_norm_kernels_compute_what_the_kit_computes() {
        let k = Emulated::compile(ELEMENTWISE).unwrap();
        let (n, d) = (37, 19);
        let x = data(n * d, 4);
        let mut bn = BatchNorm::new(&Init::new(0).pp("bn"), d);
        bn.weight.value = data(d, 5).iter().map(|v| 1.0 + 0.5 * v).collect();
        bn.bias.value = data(d, 6);
        let (gamma, beta) = (bn.weight.value.clone(), bn.bias.value.clone());
        let (mut rm, mut rv) = (bn.running_mean.value.clone(), bn.running_var.value.clone());
        let want = bn.forward(&Tensor::new(vec![n, d], x.clone()), true);
        let (mut y, mut xhat, mut inv) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; d]);
        let g = grid(d);
        unsafe {
            k.get::<Bn>("bn_train_fwd").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                y.as_mut_ptr(),
                xhat.as_mut_ptr(),
                inv.as_mut_ptr(),
                rm.as_mut_ptr(),
                rv.as_mut_ptr(),
                x.as_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                n as i32,
                d as i32,
                1e-5,
                0.1,
            )
        };
        close(&y, &want.data, 1e-5, "y");
        close(&rm, &bn.running_mean.value, 1e-6, "running mean");
        close(&rv, &bn.running_var.value, 1e-6, "running variance");
        // backward: dx, and dγ, dβ accumulated onto what is there
        let dy = data(n * d, 7);
        let dx_want = bn.backward(&Tensor::new(vec![n, d], dy.clone()));
        let (mut dx, mut dg, mut db) = (vec![0.0; n * d], vec![0.25; d], vec![-0.5; d]);
        unsafe {
            k.get::<BnBack>("bn_train_bwd").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                dx.as_mut_ptr(),
                dg.as_mut_ptr(),
                db.as_mut_ptr(),
                dy.as_ptr(),
                xhat.as_ptr(),
                inv.as_ptr(),
                gamma.as_ptr(),
                n as i32,
                d as i32,
            )
        };
        close(&dx, &dx_want.data, 1e-5, "dx");
        let dg_want: Vec<f32> = bn.weight.grad.iter().map(|g| g + 0.25).collect();
        let db_want: Vec<f32> = bn.bias.grad.iter().map(|g| g - 0.5).collect();
        close(&dg, &dg_want, 1e-5, "dgamma");
        close(&db, &db_want, 1e-5, "dbeta");
        // evaluation, with the running statistics
        let want = bn.forward(&Tensor::new(vec![n, d], x.clone()), false);
        type Eval = unsafe extern "C" fn(
            u32,
            u32,
            *mut f32,
            *const f32,
            *const f32,
            *const f32,
            *const f32,
            *const f32,
            i32,
            i32,
            f32,
        );
        let g = grid(n * d);
        unsafe {
            k.get::<Eval>("bn_eval_fwd").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                y.as_mut_ptr(),
                x.as_ptr(),
                rm.as_ptr(),
                rv.as_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                n as i32,
                d as i32,
                1e-5,
            )
        };
        close(&y, &want.data, 1e-5, "evaluation y");
    }

    #[test]
    fn the_elementwise_kernels_do_what_they_say() {
        let k = Emulated::compile(ELEMENTWISE).unwrap();
        let (n, d) = (9, 5);
        let x = data(n * d, 8);
        let b = data(d, 9);
        let g = grid(n * d);
        let mut y = x.clone();
        type Bias = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32, i32);
        unsafe {
            k.get::<Bias>("add_bias_rows").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                y.as_mut_ptr(),
                b.as_ptr(),
                n as i32,
                d as i32,
            )
        };
        let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + b[i % d]).collect();
        close(&y, &want, 0.0, "add_bias_rows");
        type Relu = unsafe extern "C" fn(u32, u32, *mut f32, i32);
        unsafe {
            k.get::<Relu>("relu_fwd").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                y.as_mut_ptr(),
                (n * d) as i32,
            )
        };
        let want: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
        close(&y, &want, 0.0, "relu_fwd");
        let mut gr = data(n * d, 10);
        let g0 = gr.clone();
        type ReluB = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32);
        unsafe {
            k.get::<ReluB>("relu_bwd").unwrap()(
                g.grid_dim.0,
                g.block_dim.0,
                gr.as_mut_ptr(),
                y.as_ptr(),
                (n * d) as i32,
            )
        };
        let want: Vec<f32> =
            g0.iter().zip(&y).map(|(g, y)| if *y > 0.0 { *g } else { 0.0 }).collect();
        close(&gr, &want, 0.0, "relu_bwd");
        let mut sums = vec![1.0f32; d];
        type Cols = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32, i32);
        let gd = grid(d);
        unsafe {
            k.get::<Cols>("col_sum_acc").unwrap()(
                gd.grid_dim.0,
                gd.block_dim.0,
                sums.as_mut_ptr(),
                x.as_ptr(),
                n as i32,
                d as i32,
            )
        };
        let want: Vec<f32> =
            (0..d).map(|j| 1.0 + (0..n).map(|i| x[i * d + j]).sum::<f32>()).collect();
        close(&sums, &want, 1e-6, "col_sum_acc");
    }
}
