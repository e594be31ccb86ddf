//! The `resnet` on a CUDA device: cuDNN convolutions (forward, backward data, backward
//! filter), and NVRTC kernels for the batch norm with its fused ReLU, the residual add and
//! the global average pool. The maths are those of the CPU path ([`crate::bn`]): training
//! statistics per `bn_groups` slice summed in f64, running statistics updated slice by slice,
//! the ReLU masks taken from the pre-activation.
//!
//! Parameters and their gradients live on the device; the host's `Param`s are copies, moved
//! by [`OnGpu::values_to_host`], [`OnGpu::values_to_device`] and [`OnGpu::grads_to_host`].
//! Not on the device yet: `stem_pool` (cuDNN's safe bindings have no pooling backward) and
//! `sync_batch_norm` (the host refuses data-parallel GPU runs).

use latent_cuda::cudarc::cudnn::{
    sys as dnn, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn,
    FilterDescriptor, TensorDescriptor,
};
use latent_cuda::cudarc::driver::{CudaSlice, LaunchConfig};
use latent_cuda::kernels::grid;
use latent_cuda::{launch, DeviceError, Doing, Gpu, OnParam, ParamBuffers};
use latent_sdk::abi::{DeviceBinding, DeviceParam, DeviceTensorDesc};
use latent_sdk::prelude::*;
use std::sync::Arc;

/// Kernels of module `resnet`: NCHW, statistics index k = group·C + channel.
pub const KERNELS: &str = r#"
#define BLOCK 256
__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = BLOCK / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}
// `parts` blocks per (group, channel) k, block p summing part p of the slice:
// out[2(k parts + p)] = sum x, out[2(k parts + p) + 1] = sum x^2 (bn_finish adds the parts in order)
extern "C" __global__ void bn_sums(double* out, const float* x, int c, int s, int per_group,
        int parts) {
    __shared__ double sh[BLOCK];
    int k = blockIdx.x / parts, p = blockIdx.x % parts, g = k / c, ch = k % c;
    long m = (long)per_group * s;
    long lo = m * p / parts, hi = m * (p + 1) / parts;
    double a = 0.0, b = 0.0;
    for (long i = lo + threadIdx.x; i < hi; i += BLOCK) {
        long img = (long)g * per_group + i / s;
        float v = x[(img * c + ch) * s + i % s];
        a += v; b += (double)v * v;
    }
    a = block_sum(a, sh); b = block_sum(b, sh);
    if (threadIdx.x == 0) { out[2 * blockIdx.x] = a; out[2 * blockIdx.x + 1] = b; }
}
// the parts of (group, channel) k added in order
__device__ void part_sums(const double* sums, int k, int parts, double* a, double* b) {
    *a = 0.0; *b = 0.0;
    for (int p = 0; p < parts; ++p) { *a += sums[2 * (k * parts + p)]; *b += sums[2 * (k * parts + p) + 1]; }
}
// one thread a channel, groups in order (the running statistics move once per slice)
extern "C" __global__ void bn_finish(float* mean, float* inv, float* rm, float* rv,
        const double* sums, int c, int groups, int parts, double m, float eps, float mo) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    for (int g = 0; g < groups; ++g) {
        int k = g * c + ch;
        double sx, sxx;
        part_sums(sums, k, parts, &sx, &sxx);
        double mu = sx / m;
        double var = sxx / m - mu * mu;
        if (var < 0.0) var = 0.0;
        rm[ch] = (1.0f - mo) * rm[ch] + mo * (float)mu;
        rv[ch] = (1.0f - mo) * rv[ch] + mo * (float)(var * m / (m - 1.0));
        mean[k] = (float)mu;
        inv[k] = 1.0f / sqrtf((float)var + eps);
    }
}
extern "C" __global__ void bn_eval_stats(float* mean, float* inv, const float* rm,
        const float* rv, int c, float eps) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    mean[ch] = rm[ch];
    inv[ch] = 1.0f / sqrtf(rv[ch] + eps);
}
__device__ int stat_index(long i, int c, int s, int per_group) {
    long plane = i / s;
    int ch = (int)(plane % c);
    long img = plane / c;
    return (int)(img / per_group) * c + ch;
}
// y = a x + b with a = gamma inv, b = beta - mean a; then ReLU if relu
extern "C" __global__ void bn_apply(float* y, const float* x, const float* mean,
        const float* inv, const float* gamma, const float* beta, long len, int c, int s,
        int per_group, int relu) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    int k = stat_index(i, c, s, per_group), ch = (int)((i / s) % c);
    float a = gamma[ch] * inv[k];
    float b = beta[ch] - mean[k] * a;
    float z = a * x[i] + b;
    y[i] = relu && !(z > 0.0f) ? 0.0f : z;
}
// `parts` blocks per (group, channel), as bn_sums: dy := dy [a x + b > 0] (with relu), then
// the part's sum dy and sum dy (x - mean)
extern "C" __global__ void bn_bwd_sums(double* out, float* dy, const float* x,
        const float* mean, const float* inv, const float* gamma, const float* beta,
        int c, int s, int per_group, int relu, int parts) {
    __shared__ double sh[BLOCK];
    int k = blockIdx.x / parts, p = blockIdx.x % parts, g = k / c, ch = k % c;
    long m = (long)per_group * s;
    long lo = m * p / parts, hi = m * (p + 1) / parts;
    float a = gamma[ch] * inv[k];
    float b = beta[ch] - mean[k] * a;
    double sg = 0.0, sgx = 0.0;
    for (long i = lo + threadIdx.x; i < hi; i += BLOCK) {
        long img = (long)g * per_group + i / s;
        long at = (img * c + ch) * s + i % s;
        float v = x[at];
        float d = dy[at];
        if (relu && !(a * v + b > 0.0f)) { d = 0.0f; dy[at] = 0.0f; }
        sg += d; sgx += (double)d * (v - mean[k]);
    }
    sg = block_sum(sg, sh); sgx = block_sum(sgx, sh);
    if (threadIdx.x == 0) { out[2 * blockIdx.x] = sg; out[2 * blockIdx.x + 1] = sgx; }
}
extern "C" __global__ void bn_bwd_finish(float* dgamma, float* dbeta, float* mg, float* mgx,
        const double* sums, const float* inv, int c, int groups, int parts, double m) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    for (int g = 0; g < groups; ++g) {
        int k = g * c + ch;
        double sg, sgx;
        part_sums(sums, k, parts, &sg, &sgx);
        double sgxhat = (double)inv[k] * sgx;
        dbeta[ch] += (float)sg;
        dgamma[ch] += (float)sgxhat;
        mg[k] = (float)(sg / m);
        mgx[k] = (float)(sgxhat / m);
    }
}
// dx = gamma inv (dy - mean(dy) - xhat mean(dy xhat)), in place in dy
extern "C" __global__ void bn_bwd_apply(float* dy, const float* x, const float* mean,
        const float* inv, const float* gamma, const float* mg, const float* mgx, long len,
        int c, int s, int per_group) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    int k = stat_index(i, c, s, per_group), ch = (int)((i / s) % c);
    float is = inv[k];
    dy[i] = gamma[ch] * is * (dy[i] - mg[k] - (x[i] - mean[k]) * is * mgx[k]);
}
// y = ReLU(y + r)
extern "C" __global__ void add_relu(float* y, const float* r, long len) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float z = y[i] + r[i];
    y[i] = z > 0.0f ? z : 0.0f;
}
// g := g [y > 0] and a copy into g2 (y: the block's output, positive where z was)
extern "C" __global__ void relu_mask_copy(float* g, float* g2, const float* y, long len) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float d = y[i] > 0.0f ? g[i] : 0.0f;
    g[i] = d; g2[i] = d;
}
extern "C" __global__ void add_into(float* a, const float* b, long len) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) a[i] += b[i];
}
// out[p] = mean of plane p (one thread a plane, in order)
extern "C" __global__ void gap_fwd(float* out, const float* x, int planes, int s) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= planes) return;
    float acc = 0.0f;
    for (int i = 0; i < s; ++i) acc += x[(long)p * s + i];
    out[p] = acc / s;
}
extern "C" __global__ void gap_bwd(float* dx, const float* dy, long len, int s) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) dx[i] = dy[i / s] / s;
}
"#;

const BLOCK: u32 = 256;

/// Blocks per (group, channel) of the batch-norm sums: about 1,024 blocks in all, so that a
/// layer of few channels still fills the GPU, and parts of at least 4,096 values.
fn parts(slices: usize, values: usize) -> usize {
    1024usize.div_ceil(slices.max(1)).min(values.div_ceil(4096)).max(1)
}

fn per_block(blocks: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

type Act = Arc<CudaSlice<f32>>;

/// The device's shared state: cuDNN, the convolution workspace.
struct Dev {
    gpu: Arc<Gpu>,
    dnn: Arc<Cudnn>,
    workspace: Option<CudaSlice<u8>>,
}

// SAFETY: cuDNN allows a handle on any thread as long as no two threads use it at once; the
// handle is reached only through `&mut OnGpu`, so one call at a time uses it.
unsafe impl Send for Dev {}

impl Dev {
    fn workspace(&mut self, bytes: usize) -> Result<&mut CudaSlice<u8>, DeviceError> {
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            let w = self
                .gpu
                .stream()
                .alloc_zeros::<u8>(bytes.max(1))
                .doing("allocating the cuDNN workspace")?;
            self.workspace = Some(w);
        }
        Ok(self.workspace.as_mut().expect("allocated above"))
    }

    fn tensor(&self, [n, c, h, w]: [usize; 4]) -> Result<TensorDescriptor<f32>, DeviceError> {
        self.dnn
            .create_4d_tensor::<f32>(
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                [n as i32, c as i32, h as i32, w as i32],
            )
            .doing("a cuDNN tensor descriptor")
    }
}

/// A convolution's cuDNN descriptors (input, filter, convolution, output) and output shape.
type ConvDescs = (
    TensorDescriptor<f32>,
    FilterDescriptor<f32>,
    ConvDescriptor<f32>,
    TensorDescriptor<f32>,
    [usize; 4],
);

/// conv (no bias) → batch norm → ReLU if `relu`, with what the backward needs.
struct ConvBn {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
    /// Parameter indices: conv weight, γ, β, running mean, running variance.
    w: usize,
    bn: usize,
    saved: Option<Saved>,
    /// cuDNN's descriptors and algorithms, per input shape met so far.
    plans: Vec<Plan>,
}

/// A convolution at one input shape: cuDNN's descriptors and the forward algorithm (chosen once
/// by cuDNN's heuristics). The backward algorithms are ALGO_1, which is deterministic (the
/// heuristics' first choice may accumulate with atomics, in another order every run), unless
/// cuDNN refuses ALGO_1 for this shape: then its heuristics choose.
struct Plan {
    x_shape: [usize; 4],
    descs: ConvDescs,
    fwd: dnn::cudnnConvolutionFwdAlgo_t,
    bwd_data: dnn::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: dnn::cudnnConvolutionBwdFilterAlgo_t,
}

// SAFETY: as `Dev`: descriptors are plain cuDNN objects used by one call at a time.
unsafe impl Send for Plan {}

const BWD_DATA: dnn::cudnnConvolutionBwdDataAlgo_t =
    dnn::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
const BWD_FILTER: dnn::cudnnConvolutionBwdFilterAlgo_t =
    dnn::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;

struct Saved {
    x: Act,
    x_shape: [usize; 4],
    z: CudaSlice<f32>,
    mean: CudaSlice<f32>,
    inv: CudaSlice<f32>,
    per_group: usize,
}

struct Net {
    p: ParamBuffers,
    groups: usize,
}

impl ConvBn {
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let p = self.k / 2;
        ((h + 2 * p - self.k) / self.stride + 1, (w + 2 * p - self.k) / self.stride + 1)
    }

    /// The index of the plan for inputs of `x_shape`, made on first use.
    fn plan(&mut self, dev: &Dev, x_shape: [usize; 4]) -> Result<usize, DeviceError> {
        if let Some(i) = self.plans.iter().position(|p| p.x_shape == x_shape) {
            return Ok(i);
        }
        let descs = self.descs(dev, x_shape)?;
        let (xd, wd, cd, yd, _) = &descs;
        let op = ConvForward { conv: cd, x: xd, w: wd, y: yd };
        let fwd = op.pick_algorithm().doing("choosing a convolution")?;
        let data = ConvBackwardData { conv: cd, dx: xd, w: wd, dy: yd };
        let bwd_data = match data.get_workspace_size(BWD_DATA) {
            Ok(_) => BWD_DATA,
            Err(_) => data.pick_algorithm().doing("choosing a convolution's backward (data)")?,
        };
        let filter = ConvBackwardFilter { conv: cd, x: xd, dw: wd, dy: yd };
        let bwd_filter = match filter.get_workspace_size(BWD_FILTER) {
            Ok(_) => BWD_FILTER,
            Err(_) => {
                filter.pick_algorithm().doing("choosing a convolution's backward (filter)")?
            }
        };
        self.plans.push(Plan { x_shape, descs, fwd, bwd_data, bwd_filter });
        Ok(self.plans.len() - 1)
    }

    fn descs(&self, dev: &Dev, x_shape: [usize; 4]) -> Result<ConvDescs, DeviceError> {
        let [n, _, h, w] = x_shape;
        let (ho, wo) = self.out_hw(h, w);
        let p = (self.k / 2) as i32;
        let s = self.stride as i32;
        let xd = dev.tensor(x_shape)?;
        let wd = dev
            .dnn
            .create_4d_filter::<f32>(
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                [self.cout as i32, self.cin as i32, self.k as i32, self.k as i32],
            )
            .doing("a cuDNN filter descriptor")?;
        let cd = dev
            .dnn
            .create_conv2d::<f32>(
                [p, p],
                [s, s],
                [1, 1],
                dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .doing("a cuDNN convolution descriptor")?;
        let y_shape = [n, self.cout, ho, wo];
        let yd = dev.tensor(y_shape)?;
        Ok((xd, wd, cd, yd, y_shape))
    }

    fn forward(
        &mut self,
        dev: &mut Dev,
        net: &mut Net,
        x: Act,
        x_shape: [usize; 4],
        train: bool,
    ) -> Result<(CudaSlice<f32>, [usize; 4]), DeviceError> {
        let pi = self.plan(dev, x_shape)?;
        let Plan { descs: (xd, wd, cd, yd, y_shape), fwd: algo, .. } = &self.plans[pi];
        let (y_shape, algo) = (*y_shape, *algo);
        let len: usize = y_shape.iter().product();
        let mut z = dev.gpu.zeros(len)?;
        {
            let op = ConvForward { conv: cd, x: xd, w: wd, y: yd };
            let bytes = op.get_workspace_size(algo).doing("sizing a convolution")?;
            let ws = dev.workspace(bytes)?;
            // SAFETY: the buffers have the descriptors' shapes (NCHW, f32).
            unsafe {
                op.launch(algo, Some(ws), (1.0f32, 0.0f32), &*x, &net.p.values[self.w], &mut z)
            }
            .doing("cuDNN convolution forward")?;
        }
        let [n, c, h, w] = y_shape;
        let s = h * w;
        let groups = if train { net.groups } else { 1 };
        let per_group = n / groups;
        let gpu = dev.gpu.clone();
        let mut mean = gpu.zeros(groups * c)?;
        let mut inv = gpu.zeros(groups * c)?;
        let (ci, si, pg) = (c as i32, s as i32, per_group as i32);
        let b = self.bn;
        if train {
            let parts = parts(groups * c, per_group * s);
            let pi = parts as i32;
            let mut sums =
                gpu.stream().alloc_zeros::<f64>(2 * groups * c * parts).doing("allocating")?;
            launch!(
                gpu,
                "resnet",
                KERNELS,
                "bn_sums",
                per_block(groups * c * parts),
                [&mut sums, &z, &ci, &si, &pg, &pi]
            )?;
            let m = (per_group * s) as f64;
            let gi = groups as i32;
            let (eps, mo) = (1e-5f32, 0.1f32);
            let [_, _, rm, rv] = &mut net.p.values[b..b + 4] else { unreachable!() };
            launch!(
                gpu,
                "resnet",
                KERNELS,
                "bn_finish",
                grid(c),
                [&mut mean, &mut inv, rm, rv, &sums, &ci, &gi, &pi, &m, &eps, &mo]
            )?;
        } else {
            let eps = 1e-5f32;
            let v = &net.p.values;
            launch!(
                gpu,
                "resnet",
                KERNELS,
                "bn_eval_stats",
                grid(c),
                [&mut mean, &mut inv, &v[b + 2], &v[b + 3], &ci, &eps]
            )?;
        }
        let mut y = gpu.zeros(len)?;
        let (li, relu) = (len as i64, self.relu as i32);
        let v = &net.p.values;
        launch!(
            gpu,
            "resnet",
            KERNELS,
            "bn_apply",
            grid(len),
            [&mut y, &z, &mean, &inv, &v[b], &v[b + 1], &li, &ci, &si, &pg, &relu]
        )?;
        if train {
            self.saved = Some(Saved { x, x_shape, z, mean, inv, per_group });
        }
        Ok((y, y_shape))
    }

    /// d loss / d input for d loss / d output `dy` (consumed); none unless `need_dx` (the
    /// stem's input is the images).
    fn backward(
        &mut self,
        dev: &mut Dev,
        net: &mut Net,
        mut dy: CudaSlice<f32>,
        need_dx: bool,
    ) -> Result<Option<CudaSlice<f32>>, DeviceError> {
        let Saved { x, x_shape, z, mean, inv, per_group } = self
            .saved
            .take()
            .ok_or_else(|| DeviceError("backward without a training forward".into()))?;
        let pi = self.plan(dev, x_shape)?;
        let [n, c, h, w] = self.plans[pi].descs.4;
        let (s, groups, len) = (h * w, n / per_group, n * c * h * w);
        let gpu = dev.gpu.clone();
        let (ci, si, pg, li, relu) =
            (c as i32, s as i32, per_group as i32, len as i64, self.relu as i32);
        let b = self.bn;
        let parts = parts(groups * c, per_group * s);
        let np = parts as i32;
        let mut sums =
            gpu.stream().alloc_zeros::<f64>(2 * groups * c * parts).doing("allocating")?;
        {
            let v = &net.p.values;
            launch!(
                gpu,
                "resnet",
                KERNELS,
                "bn_bwd_sums",
                per_block(groups * c * parts),
                [&mut sums, &mut dy, &z, &mean, &inv, &v[b], &v[b + 1], &ci, &si, &pg, &relu, &np]
            )?;
        }
        let mut mg = gpu.zeros(groups * c)?;
        let mut mgx = gpu.zeros(groups * c)?;
        let m = (per_group * s) as f64;
        let gi = groups as i32;
        {
            let [dg, db] = &mut net.p.grads[b..b + 2] else { unreachable!() };
            launch!(
                gpu,
                "resnet",
                KERNELS,
                "bn_bwd_finish",
                grid(c),
                [dg, db, &mut mg, &mut mgx, &sums, &inv, &ci, &gi, &np, &m]
            )?;
        }
        launch!(
            gpu,
            "resnet",
            KERNELS,
            "bn_bwd_apply",
            grid(len),
            [&mut dy, &z, &mean, &inv, &net.p.values[b], &mg, &mgx, &li, &ci, &si, &pg]
        )?;
        // dW += conv_bwd_filter(x, dz); dx = conv_bwd_data(W, dz)
        let (xd, wd, cd, yd, _) = &self.plans[pi].descs;
        {
            let op = ConvBackwardFilter { conv: cd, x: xd, dw: wd, dy: yd };
            let algo = self.plans[pi].bwd_filter;
            let bytes = op.get_workspace_size(algo).doing("sizing a convolution")?;
            let ws = dev.workspace(bytes)?;
            // SAFETY: the buffers have the descriptors' shapes.
            unsafe {
                op.launch(algo, Some(ws), (1.0f32, 1.0f32), &*x, &mut net.p.grads[self.w], &dy)
            }
            .doing("cuDNN convolution backward (filter)")?;
        }
        if !need_dx {
            return Ok(None);
        }
        let mut dx = gpu.zeros(x_shape.iter().product())?;
        {
            let op = ConvBackwardData { conv: cd, dx: xd, w: wd, dy: yd };
            let algo = self.plans[pi].bwd_data;
            let bytes = op.get_workspace_size(algo).doing("sizing a convolution")?;
            let ws = dev.workspace(bytes)?;
            // SAFETY: as above.
            unsafe {
                op.launch(algo, Some(ws), (1.0f32, 0.0f32), &mut dx, &net.p.values[self.w], &dy)
            }
            .doing("cuDNN convolution backward (data)")?;
        }
        Ok(Some(dx))
    }
}

struct Block {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
    /// The block's output, kept for the mask of its ReLU (shared with the next block's input).
    out: Option<Act>,
}

/// The network on the device.
pub struct OnGpu {
    dev: Dev,
    net: Net,
    stem: ConvBn,
    blocks: Vec<Block>,
    in_channels: usize,
    /// The last training forward's batch and final activation shape.
    pending: Option<[usize; 4]>,
    features: Option<CudaSlice<f32>>,
}

impl OnGpu {
    /// Binds to the host's device and copies the parameters of `net` there; `arch` and
    /// `in_channels` give the layers, `groups` the batch-norm slices.
    pub fn new(
        binding: &DeviceBinding,
        params: &mut dyn Module,
        arch: &crate::Arch,
        in_channels: usize,
        groups: usize,
    ) -> anyhow::Result<OnGpu> {
        // SAFETY: the binding comes from the host, which keeps its device open for its life.
        let gpu = Arc::new(unsafe { Gpu::from_binding(binding) }.map_err(err)?);
        let dnn = Cudnn::new(gpu.stream().clone())
            .map_err(|e| anyhow::anyhow!("creating the cuDNN handle: {e}"))?;
        let p = ParamBuffers::upload(&gpu, &mut visit(params)).map_err(err)?;
        // the CPU path's visit order: each ConvBn is conv.weight, then γ, β, mean, variance
        let mut at = 0;
        let mut conv_bn = |cin, cout, k, stride, relu| {
            let c = ConvBn {
                cin,
                cout,
                k,
                stride,
                relu,
                w: at,
                bn: at + 1,
                saved: None,
                plans: Vec::new(),
            };
            at += 5;
            c
        };
        let stem = conv_bn(in_channels, arch.stem_width, 3, 1, true);
        let mut blocks = Vec::new();
        let mut cin = arch.stem_width;
        for (i, (&w, &nb)) in arch.widths.iter().zip(&arch.blocks).enumerate() {
            for j in 0..nb {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let a = conv_bn(cin, w, 3, stride, true);
                let b = conv_bn(w, w, 3, 1, false);
                let shortcut = (stride != 1 || cin != w).then(|| conv_bn(cin, w, 1, stride, false));
                blocks.push(Block { a, b, shortcut, out: None });
                cin = w;
            }
        }
        ensure!(
            at == p.count(),
            "resnet: {} parameters on the device, the layers name {at}",
            p.count()
        );
        Ok(OnGpu {
            dev: Dev { gpu, dnn, workspace: None },
            net: Net { p, groups },
            stem,
            blocks,
            in_channels,
            pending: None,
            features: None,
        })
    }

    /// Images `[N, C, H, W]` on the device to features `[N, D]` there.
    pub fn forward(
        &mut self,
        images: &DeviceTensorDesc,
        train: bool,
    ) -> anyhow::Result<DeviceTensorDesc> {
        let shape: Vec<usize> = images.shape.iter().map(|&d| d as usize).collect();
        let [n, c, h, w] = shape[..] else { bail!("expected images [N, C, H, W], got {shape:?}") };
        ensure!(
            c == self.in_channels,
            "resnet was configured for in_channels = {} but the images have {c} channels",
            self.in_channels
        );
        let g = self.net.groups;
        ensure!(!train || (n % g == 0 && n / g >= 2), "bn_groups = {g} takes batch-norm statistics per slice of the batch, but {n} images do not split into {g} slices of at least 2");
        let gpu = self.dev.gpu.clone();
        // SAFETY: the host owns the images for this call; they are copied, as it reuses them.
        let view = unsafe { gpu.borrow(images) }.map_err(err)?;
        let mut x = gpu.zeros(images.len()).map_err(err)?;
        gpu.stream().memcpy_dtod(&view.slice(0..images.len()), &mut x).map_err(err)?;
        let (h0, mut shape) = self
            .stem
            .forward(&mut self.dev, &mut self.net, Arc::new(x), [n, c, h, w], train)
            .map_err(err)?;
        let mut h_: Act = Arc::new(h0);
        for bl in &mut self.blocks {
            let x = h_;
            let (a, sa) =
                bl.a.forward(&mut self.dev, &mut self.net, x.clone(), shape, train).map_err(err)?;
            let (mut y, sy) =
                bl.b.forward(&mut self.dev, &mut self.net, Arc::new(a), sa, train).map_err(err)?;
            let len = sy.iter().product::<usize>() as i64;
            match &mut bl.shortcut {
                Some(sc) => {
                    let (r, _) =
                        sc.forward(&mut self.dev, &mut self.net, x, shape, train).map_err(err)?;
                    launch_add_relu(&gpu, &mut y, &r, len).map_err(err)?;
                }
                None => launch_add_relu(&gpu, &mut y, &x, len).map_err(err)?,
            }
            let y = Arc::new(y);
            if train {
                bl.out = Some(y.clone());
            }
            h_ = y;
            shape = sy;
        }
        let [_, cf, hf, wf] = shape;
        let mut f = gpu.zeros(n * cf).map_err(err)?;
        let (planes, s) = ((n * cf) as i32, (hf * wf) as i32);
        launch_gap(&gpu, &mut f, &h_, planes, s).map_err(err)?;
        let desc = gpu.desc(&f, &[n, cf]);
        self.features = Some(f);
        self.pending = train.then_some(shape);
        Ok(desc)
    }

    /// Accumulates the gradients for d loss / d features of the last training forward.
    pub fn backward(&mut self, grad: &DeviceTensorDesc) -> anyhow::Result<()> {
        let shape = self.pending.take().context("backward without a training forward before it")?;
        let [n, c, h, w] = shape;
        let want = [n as u64, c as u64];
        ensure!(
            grad.shape.as_slice() == want,
            "feature gradient has shape {:?}, the last training forward gave {want:?}",
            grad.shape.as_slice()
        );
        let gpu = self.dev.gpu.clone();
        // SAFETY: the host owns the gradient for this call.
        let dy = unsafe { gpu.borrow(grad) }.map_err(err)?;
        let len = n * c * h * w;
        let mut g = gpu.zeros(len).map_err(err)?;
        let (li, s) = (len as i64, (h * w) as i32);
        launch_gap_bwd(&gpu, &mut g, &dy, li, s).map_err(err)?;
        for bl in self.blocks.iter_mut().rev() {
            let out = bl.out.take().context("no saved block output")?;
            let len = out.len() as i64;
            let mut g2 = gpu.zeros(out.len()).map_err(err)?;
            launch_mask_copy(&gpu, &mut g, &mut g2, &out, len).map_err(err)?;
            let dh = bl.b.backward(&mut self.dev, &mut self.net, g2, true).map_err(err)?;
            let dh = dh.context("an input gradient")?;
            let dx = bl.a.backward(&mut self.dev, &mut self.net, dh, true).map_err(err)?;
            let mut dx = dx.context("an input gradient")?;
            let ds = match &mut bl.shortcut {
                Some(sc) => sc
                    .backward(&mut self.dev, &mut self.net, g, true)
                    .map_err(err)?
                    .context("an input gradient")?,
                None => g,
            };
            let l = dx.len() as i64;
            launch_add_into(&gpu, &mut dx, &ds, l).map_err(err)?;
            g = dx;
        }
        // the images need no gradient
        self.stem.backward(&mut self.dev, &mut self.net, g, false).map_err(err)?;
        Ok(())
    }

    /// Every parameter's value and gradient buffer, in `visit_params` order (flat shapes).
    pub fn device_params(&self) -> Vec<DeviceParam> {
        self.net.p.descs(&self.dev.gpu)
    }

    /// Copies the device's values into the `Param`s.
    pub fn values_to_host(&self, net: &mut dyn Module) -> anyhow::Result<()> {
        self.net.p.values_to_host(&self.dev.gpu, &mut visit(net)).map_err(err)
    }

    /// Copies the `Param`s' values to the device.
    pub fn values_to_device(&mut self, net: &mut dyn Module) -> anyhow::Result<()> {
        self.net.p.values_to_device(&self.dev.gpu, &mut visit(net)).map_err(err)
    }

    /// Adds the device's gradients into the `Param`s' and zeroes them on the device.
    pub fn grads_to_host(&mut self, net: &mut dyn Module) -> anyhow::Result<()> {
        self.net.p.grads_to_host(&self.dev.gpu, &mut visit(net)).map_err(err)
    }
}

/// `net`'s parameters as (values, gradient) pairs, for [`ParamBuffers`].
fn visit(net: &mut dyn Module) -> impl FnMut(OnParam<'_>) + '_ {
    move |f| net.visit_params(&mut |q| f(&mut q.value, &mut q.grad))
}

fn launch_add_relu(
    gpu: &Gpu,
    y: &mut CudaSlice<f32>,
    r: &CudaSlice<f32>,
    len: i64,
) -> Result<(), DeviceError> {
    launch!(gpu, "resnet", KERNELS, "add_relu", grid(len as usize), [y, r, &len])
}

fn launch_mask_copy(
    gpu: &Gpu,
    g: &mut CudaSlice<f32>,
    g2: &mut CudaSlice<f32>,
    y: &CudaSlice<f32>,
    len: i64,
) -> Result<(), DeviceError> {
    launch!(gpu, "resnet", KERNELS, "relu_mask_copy", grid(len as usize), [g, g2, y, &len])
}

fn launch_add_into(
    gpu: &Gpu,
    a: &mut CudaSlice<f32>,
    b: &CudaSlice<f32>,
    len: i64,
) -> Result<(), DeviceError> {
    launch!(gpu, "resnet", KERNELS, "add_into", grid(len as usize), [a, b, &len])
}

fn launch_gap(
    gpu: &Gpu,
    out: &mut CudaSlice<f32>,
    x: &CudaSlice<f32>,
    planes: i32,
    s: i32,
) -> Result<(), DeviceError> {
    launch!(gpu, "resnet", KERNELS, "gap_fwd", grid(planes as usize), [out, x, &planes, &s])
}

fn launch_gap_bwd(
    gpu: &Gpu,
    dx: &mut CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    len: i64,
    s: i32,
) -> Result<(), DeviceError> {
    launch!(gpu, "resnet", KERNELS, "gap_bwd", grid(len as usize), [dx, dy, &len, &s])
}

#[cfg(test)]
mod tests {
    //! The kernels of [`KERNELS`] run on the CPU ([`latent_cuda::emulate`]) against the CPU
    //! path's layers: batch norm with its ReLU in groups ([`crate::bn::BnRelu`]), the global
    //! average pool, the residual add and its mask.
    use super::*;
    use crate::bn::BnRelu;
    use latent_cuda::emulate::Emulated;
    use latent_cuda::emulate::{assert_close as close, random as data};
    use latent_sdk::kit::{GlobalAvgPool, Init, Layer, Tensor};

    type Sums = unsafe extern "C" fn(u32, u32, *mut f64, *const f32, i32, i32, i32, i32);
    type Finish = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut f32,
        *const f64,
        i32,
        i32,
        i32,
        f64,
        f32,
        f32,
    );
    type Apply = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        i64,
        i32,
        i32,
        i32,
        i32,
    );
    type BwdSums = unsafe extern "C" fn(
        u32,
        u32,
        *mut f64,
        *mut f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        i32,
        i32,
        i32,
        i32,
        i32,
    );
    type BwdFinish = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *mut f32,
        *mut f32,
        *mut f32,
        *const f64,
        *const f32,
        i32,
        i32,
        i32,
        f64,
    );
    type BwdApply = unsafe extern "C" fn(
        u32,
        u32,
        *mut f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        i64,
        i32,
        i32,
        i32,
    );

    /// One training forward and backward of the batch norm in `groups` slices, by the kernels
    /// as `ConvBn` launches them, against `BnRelu`.
    fn batch_norm_agrees(relu: bool, groups: usize, parts: usize) {
        let k = Emulated::compile(KERNELS).unwrap();
        let (n, c, h, w) = (6, 3, 4, 5);
        let (s, len, per_group) = (h * w, n * c * h * w, n / groups);
        let x = data(len, 1).iter().map(|v| 0.7 * v + 0.2).collect::<Vec<_>>();
        let mut bn = BnRelu::new(&Init::new(0).pp("bn"), c, relu);
        bn.groups = groups;
        bn.weight.value = vec![1.3, 0.6, -0.8];
        bn.bias.value = vec![0.1, -0.2, 0.3];
        bn.running_mean.value = vec![0.05, -0.1, 0.2];
        let (gamma, beta) = (bn.weight.value.clone(), bn.bias.value.clone());
        let (mut rm, mut rv) = (bn.running_mean.value.clone(), bn.running_var.value.clone());
        let want = bn.forward(Tensor::new(vec![n, c, h, w], x.clone()), true);
        let (ci, si, pg, gi, li) =
            (c as i32, s as i32, per_group as i32, groups as i32, len as i64);
        let m = (per_group * s) as f64;
        let mut sums = vec![0f64; 2 * groups * c * parts];
        let np = parts as i32;
        let (mut mean, mut inv, mut y) =
            (vec![0f32; groups * c], vec![0f32; groups * c], vec![0f32; len]);
        let (pb, gc, gl) = (per_block(groups * c * parts), grid(c), grid(len));
        unsafe {
            k.get::<Sums>("bn_sums").unwrap()(
                pb.grid_dim.0,
                pb.block_dim.0,
                sums.as_mut_ptr(),
                x.as_ptr(),
                ci,
                si,
                pg,
                np,
            );
            k.get::<Finish>("bn_finish").unwrap()(
                gc.grid_dim.0,
                gc.block_dim.0,
                mean.as_mut_ptr(),
                inv.as_mut_ptr(),
                rm.as_mut_ptr(),
                rv.as_mut_ptr(),
                sums.as_ptr(),
                ci,
                gi,
                np,
                m,
                1e-5,
                0.1,
            );
            k.get::<Apply>("bn_apply").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                y.as_mut_ptr(),
                x.as_ptr(),
                mean.as_ptr(),
                inv.as_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                li,
                ci,
                si,
                pg,
                relu as i32,
            );
        }
        let what = format!("relu {relu}, groups {groups}, parts {parts}");
        close(&y, &want.data, 1e-5, &format!("y, {what}"));
        close(&rm, &bn.running_mean.value, 1e-6, &format!("running mean, {what}"));
        close(&rv, &bn.running_var.value, 1e-6, &format!("running variance, {what}"));
        let dy0 = data(len, 2);
        let dx_want = bn.backward(Tensor::new(vec![n, c, h, w], dy0.clone()));
        let mut dy = dy0;
        let (mut dg, mut db) = (vec![0.5f32; c], vec![-0.25f32; c]);
        let (mut mg, mut mgx) = (vec![0f32; groups * c], vec![0f32; groups * c]);
        unsafe {
            k.get::<BwdSums>("bn_bwd_sums").unwrap()(
                pb.grid_dim.0,
                pb.block_dim.0,
                sums.as_mut_ptr(),
                dy.as_mut_ptr(),
                x.as_ptr(),
                mean.as_ptr(),
                inv.as_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                ci,
                si,
                pg,
                relu as i32,
                np,
            );
            k.get::<BwdFinish>("bn_bwd_finish").unwrap()(
                gc.grid_dim.0,
                gc.block_dim.0,
                dg.as_mut_ptr(),
                db.as_mut_ptr(),
                mg.as_mut_ptr(),
                mgx.as_mut_ptr(),
                sums.as_ptr(),
                inv.as_ptr(),
                ci,
                gi,
                np,
                m,
            );
            k.get::<BwdApply>("bn_bwd_apply").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                dy.as_mut_ptr(),
                x.as_ptr(),
                mean.as_ptr(),
                inv.as_ptr(),
                gamma.as_ptr(),
                mg.as_ptr(),
                mgx.as_ptr(),
                li,
                ci,
                si,
                pg,
            );
        }
        close(&dy, &dx_want.data, 1e-4, &format!("dx, {what}"));
        let dg_want: Vec<f32> = bn.weight.grad.iter().map(|g| g + 0.5).collect();
        let db_want: Vec<f32> = bn.bias.grad.iter().map(|g| g - 0.25).collect();
        close(&dg, &dg_want, 1e-5, &format!("dgamma, {what}"));
        close(&db, &db_want, 1e-5, &format!("dbeta, {what}"));
    }

    #[test]
    fn the_batch_norm_kernels_compute_what_the_cpu_path_computes() {
        // (ReLU, statistics groups, blocks per group and channel: 3 are added in order)
        for (relu, groups, parts) in [(true, 1, 1), (false, 2, 1), (true, 2, 3), (false, 1, 3)] {
            batch_norm_agrees(relu, groups, parts);
        }
    }

    #[test]
    fn pooling_and_the_residual_kernels_compute_what_the_cpu_path_computes() {
        let k = Emulated::compile(KERNELS).unwrap();
        let (n, c, h, w) = (2, 3, 3, 4);
        let (len, s) = (n * c * h * w, h * w);
        let x = data(len, 3);
        let mut gap = GlobalAvgPool::new();
        let want = gap.forward(&Tensor::new(vec![n, c, h, w], x.clone()), true);
        let mut out = vec![0f32; n * c];
        let (gp, gl) = (grid(n * c), grid(len));
        type Gap = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i32, i32);
        type GapB = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i64, i32);
        unsafe {
            k.get::<Gap>("gap_fwd").unwrap()(
                gp.grid_dim.0,
                gp.block_dim.0,
                out.as_mut_ptr(),
                x.as_ptr(),
                (n * c) as i32,
                s as i32,
            )
        };
        close(&out, &want.data, 1e-6, "gap forward");
        let dy = data(n * c, 4);
        let want = gap.backward(&Tensor::new(vec![n, c], dy.clone()));
        let mut dx = vec![0f32; len];
        unsafe {
            k.get::<GapB>("gap_bwd").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                dx.as_mut_ptr(),
                dy.as_ptr(),
                len as i64,
                s as i32,
            )
        };
        close(&dx, &want.data, 1e-6, "gap backward");
        // y = ReLU(y + r); then the gradient masked where y > 0, in place and copied
        let r = data(len, 5);
        let mut y = x.clone();
        type Two = unsafe extern "C" fn(u32, u32, *mut f32, *const f32, i64);
        unsafe {
            k.get::<Two>("add_relu").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                y.as_mut_ptr(),
                r.as_ptr(),
                len as i64,
            )
        };
        let want: Vec<f32> = x.iter().zip(&r).map(|(a, b)| (a + b).max(0.0)).collect();
        close(&y, &want, 0.0, "add_relu");
        let mut g = data(len, 6);
        let g0 = g.clone();
        let mut g2 = vec![0f32; len];
        type Mask = unsafe extern "C" fn(u32, u32, *mut f32, *mut f32, *const f32, i64);
        unsafe {
            k.get::<Mask>("relu_mask_copy").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                g.as_mut_ptr(),
                g2.as_mut_ptr(),
                y.as_ptr(),
                len as i64,
            )
        };
        let want: Vec<f32> =
            g0.iter().zip(&y).map(|(g, y)| if *y > 0.0 { *g } else { 0.0 }).collect();
        close(&g, &want, 0.0, "masked gradient");
        close(&g2, &want, 0.0, "its copy");
        let mut a = g.clone();
        unsafe {
            k.get::<Two>("add_into").unwrap()(
                gl.grid_dim.0,
                gl.block_dim.0,
                a.as_mut_ptr(),
                r.as_ptr(),
                len as i64,
            )
        };
        let want: Vec<f32> = g.iter().zip(&r).map(|(a, b)| a + b).collect();
        close(&a, &want, 0.0, "add_into");
    }
}
