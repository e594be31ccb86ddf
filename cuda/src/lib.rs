//! # latent-cuda: the CUDA device, for the host and for plugins
//!
//! The host opens the device named by the config's `device = "cuda:N"` key with
//! [`Gpu::open`], and hands it to encoders as a [`DeviceBinding`] (raw context and stream);
//! a plugin turns that back into a [`Gpu`] with [`Gpu::from_binding`]. Both sides then queue
//! their work on the one stream, and tensors cross as [`DeviceTensorDesc`] pointers
//! ([`Gpu::borrow`] views one without copying or freeing it).
//!
//! Nothing here links against CUDA. The driver (`libcuda.so.1`), cuBLAS, cuDNN and NVRTC are
//! loaded when a device is opened (cudarc's `dynamic-loading`), so a build needs no CUDA
//! toolkit and a machine without a driver gets an [`OpenError`] saying what is missing:
//!
//! ```
//! // On a machine without a driver (CI), opening fails with a message, never a crash.
//! match latent_cuda::Gpu::open(0) {
//!     Ok(gpu) => println!("opened {}", gpu.describe()),
//!     Err(e) => println!("no GPU: {e}"),
//! }
//! ```
//!
//! Small kernels are CUDA C compiled at run time by NVRTC for the device's architecture and
//! cached per [`Gpu`] ([`Gpu::function`]); [`kernels`] holds the ones the host and the SDK
//! share (elementwise ops, batch norm, cuBLAS products). [`emulate`] runs kernel sources on the
//! CPU, so that their arithmetic is tested on machines without a GPU.

#![deny(missing_docs)]

pub mod emulate;
pub mod kernels;

pub use cudarc;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, PinnedHostSlice,
};
use latent_abi::{Device, DeviceBinding, DeviceKind, DeviceParam, DeviceTensorDesc};
use std::collections::HashMap;
use std::fmt;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// Why a CUDA device could not be opened. Each message names what is missing and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No NVIDIA driver library could be loaded.
    NoDriver,
    /// A CUDA library the device path needs could not be loaded.
    NoLibrary {
        /// Which one (`cuBLAS`, `cuDNN`, `NVRTC`).
        what: &'static str,
        /// The file searched for.
        file: &'static str,
        /// Where it usually comes from.
        hint: &'static str,
    },
    /// The driver loaded but refused to start (`cuInit`).
    Init(String),
    /// The ordinal is past the devices the driver sees.
    NoSuchDevice {
        /// The ordinal asked for.
        ordinal: u32,
        /// How many devices there are.
        count: u32,
    },
    /// Creating the context or stream failed.
    Context(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NoDriver => write!(
                f,
                "no NVIDIA driver on this machine: libcuda.so.1 could not be loaded (install the \
                 NVIDIA driver, or train on the cpu with device = \"cpu\")"
            ),
            OpenError::NoLibrary { what, file, hint } => write!(
                f,
                "the NVIDIA driver is here but {what} is not: {file} could not be loaded ({hint}; \
                 add its folder to LD_LIBRARY_PATH)"
            ),
            OpenError::Init(e) => write!(f, "the NVIDIA driver did not start (cuInit: {e})"),
            OpenError::NoSuchDevice { ordinal, count: 0 } => {
                write!(f, "cuda:{ordinal} asked for, but the driver sees no CUDA device")
            }
            OpenError::NoSuchDevice { ordinal, count } => write!(
                f,
                "cuda:{ordinal} asked for, but this machine has {count} CUDA device{} (cuda:0{})",
                if *count == 1 { "" } else { "s" },
                if *count == 1 { String::new() } else { format!(" to cuda:{}", count - 1) }
            ),
            OpenError::Context(e) => write!(f, "could not create a CUDA context: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Keeps memory freed with `cuMemFreeAsync` in the device's pool instead of returning it to
/// the driver at every synchronisation (the pool's default threshold is 0), so that each step
/// reuses the last one's memory, as the CPU side keeps its pages (`host/src/memory.rs`).
fn keep_freed_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    // SAFETY: plain driver queries on a live device; failures leave the default behaviour.
    unsafe {
        let mut pool = std::ptr::null_mut();
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().is_ok() {
            let mut max = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut max as *mut u64).cast(),
            );
        }
    }
}

/// Whether the NVIDIA driver library can be loaded here (no device is touched).
pub fn driver_present() -> bool {
    // SAFETY: only tries `dlopen` on the driver's library names.
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Checks that the libraries the device path needs beside the driver can be loaded.
fn check_libraries() -> Result<(), OpenError> {
    // SAFETY: each only tries `dlopen` on the library's names.
    let present = |f: unsafe fn() -> bool| catch_unwind(|| unsafe { f() }).unwrap_or(false);
    let pip = "pip's nvidia-*-cu13 packages put it under site-packages/nvidia/*/lib";
    if !present(cudarc::cublas::sys::is_culib_present) {
        return Err(OpenError::NoLibrary { what: "cuBLAS", file: "libcublas.so.13", hint: pip });
    }
    if !present(cudarc::nvrtc::sys::is_culib_present) {
        return Err(OpenError::NoLibrary { what: "NVRTC", file: "libnvrtc.so.13", hint: pip });
    }
    if !present(cudarc::cudnn::sys::is_culib_present) {
        return Err(OpenError::NoLibrary { what: "cuDNN", file: "libcudnn.so.9", hint: pip });
    }
    Ok(())
}

/// The number of CUDA devices the driver sees, or why it cannot say.
pub fn device_count() -> Result<u32, OpenError> {
    if !driver_present() {
        return Err(OpenError::NoDriver);
    }
    let r = catch_unwind(|| {
        cudarc::driver::result::init().map_err(|e| OpenError::Init(e.to_string()))?;
        CudaContext::device_count().map(|n| n as u32).map_err(|e| OpenError::Init(e.to_string()))
    });
    r.unwrap_or_else(|p| Err(OpenError::Init(panic_text(&p))))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic in the CUDA bindings".into())
}

/// An error of a device call, with what was being done.
#[derive(Debug)]
pub struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeviceError {}

/// Attaches what was being done to a CUDA error.
pub trait Doing<T> {
    /// `Err(e)` becomes "`what`: e".
    fn doing(self, what: &str) -> Result<T, DeviceError>;
}

impl<T, E: fmt::Display> Doing<T> for Result<T, E> {
    fn doing(self, what: &str) -> Result<T, DeviceError> {
        self.map_err(|e| DeviceError(format!("{what}: {e}")))
    }
}

/// An open CUDA device: its primary context, the stream all work goes on, and the kernels
/// compiled for it so far.
pub struct Gpu {
    ordinal: u32,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu(cuda:{})", self.ordinal)
    }
}

impl Gpu {
    /// Opens `cuda:ordinal` for the host: loads the driver and libraries, retains the
    /// device's primary context and creates a stream.
    pub fn open(ordinal: u32) -> Result<Gpu, OpenError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(OpenError::NoSuchDevice { ordinal, count });
        }
        check_libraries()?;
        let r = catch_unwind(|| -> Result<Gpu, OpenError> {
            let ctx = CudaContext::new(ordinal as usize)
                .map_err(|e| OpenError::Context(e.to_string()))?;
            // One stream carries all work, so cudarc's per-buffer events are not needed.
            // SAFETY: no buffer of this context exists yet.
            unsafe { ctx.disable_event_tracking() };
            keep_freed_memory(&ctx);
            let stream = ctx.new_stream().map_err(|e| OpenError::Context(e.to_string()))?;
            Ok(Gpu { ordinal, ctx, stream, modules: Mutex::new(HashMap::new()) })
        });
        r.unwrap_or_else(|p| Err(OpenError::Context(panic_text(&p))))
    }

    /// The device a host handed over, on the plugin's side of the boundary: the same primary
    /// context (retained once more), and the host's stream, borrowed.
    ///
    /// # Safety
    /// `binding` must come from a live [`Gpu`] of this process ([`Gpu::binding`]), which must
    /// outlive the returned one.
    pub unsafe fn from_binding(binding: &DeviceBinding) -> Result<Gpu, DeviceError> {
        if binding.device.kind != DeviceKind::Cuda {
            return Err(DeviceError(format!("{} is not a CUDA device", binding.device)));
        }
        let ordinal = binding.device.ordinal;
        let r = catch_unwind(AssertUnwindSafe(|| -> Result<Gpu, DeviceError> {
            let ctx = CudaContext::new(ordinal as usize).doing("retaining the primary context")?;
            if ctx.cu_ctx() as u64 != binding.context {
                return Err(DeviceError(format!(
                    "the host's context for cuda:{ordinal} is not the device's primary context"
                )));
            }
            ctx.disable_event_tracking();
            let stream = ctx.wrap_borrowed_stream(binding.stream as cudarc::driver::sys::CUstream);
            Ok(Gpu { ordinal, ctx, stream, modules: Mutex::new(HashMap::new()) })
        }));
        r.unwrap_or_else(|p| Err(DeviceError(panic_text(&p))))
    }

    /// The handles a plugin needs ([`Gpu::from_binding`]).
    pub fn binding(&self) -> DeviceBinding {
        DeviceBinding {
            device: self.device(),
            context: self.ctx.cu_ctx() as u64,
            stream: self.stream.cu_stream() as u64,
        }
    }

    /// `cuda:N`.
    pub fn device(&self) -> Device {
        Device { kind: DeviceKind::Cuda, ordinal: self.ordinal }
    }

    /// The stream all work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// "cuda:0 (NVIDIA H200, compute 9.0, 139.8 GiB)".
    pub fn describe(&self) -> String {
        let name = self.ctx.name().unwrap_or_else(|_| "?".into());
        let (ma, mi) = self.ctx.compute_capability().unwrap_or((0, 0));
        let gib = self.ctx.total_mem().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        format!("cuda:{} ({name}, compute {ma}.{mi}, {gib:.1} GiB)", self.ordinal)
    }

    /// Kernel `name` of module `module`, compiled from CUDA C `src` by NVRTC for this device
    /// the first time it is asked for (errors carry NVRTC's log).
    pub fn function(
        &self,
        module: &'static str,
        src: &str,
        name: &str,
    ) -> Result<CudaFunction, DeviceError> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let m = match modules.get(module) {
            Some(m) => m.clone(),
            None => {
                let (ma, mi) = self.ctx.compute_capability().doing("reading the architecture")?;
                let image = compile(module, src, ma, mi)?;
                let m = self.ctx.load_module(image).doing("loading kernels")?;
                modules.insert(module, m.clone());
                m
            }
        };
        m.load_function(name).doing(&format!("kernel `{name}` of `{module}`"))
    }

    /// A new zeroed buffer of `len` values.
    pub fn zeros(&self, len: usize) -> Result<CudaSlice<f32>, DeviceError> {
        self.stream.alloc_zeros::<f32>(len.max(1)).doing("allocating device memory")
    }

    /// A copy of `host` on the device.
    pub fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>, DeviceError> {
        if host.is_empty() {
            return self.zeros(1);
        }
        self.stream.clone_htod(host).doing("copying to the device")
    }

    /// Copies `host` into `dst` (same length).
    pub fn upload_into(&self, host: &[f32], dst: &mut CudaSlice<f32>) -> Result<(), DeviceError> {
        if host.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(0..host.len());
        self.stream.memcpy_htod(host, &mut view).doing("copying to the device")
    }

    /// Copies `host` into `dst` through a page-locked buffer of `staging` (one per length met,
    /// kept): the device copy is queued on the stream and returns at once; the buffer is not
    /// written again before that copy is done (its own event, recorded after the copy).
    pub fn upload_pinned(
        &self,
        host: &[f32],
        staging: &mut Staging,
        dst: &mut CudaSlice<f32>,
    ) -> Result<(), DeviceError> {
        if host.is_empty() {
            return Ok(());
        }
        let slot = match staging.slots.iter().position(|s| s.0.len() == host.len()) {
            Some(i) => i,
            None => {
                // SAFETY: the buffer is written in full below before any copy reads it.
                let p = unsafe { self.ctx.alloc_pinned::<f32>(host.len()) }
                    .doing("allocating page-locked memory")?;
                let e = self.ctx.new_event(None).doing("creating an event")?;
                staging.slots.push((p, e, false));
                staging.slots.len() - 1
            }
        };
        let (p, done, pending) = &mut staging.slots[slot];
        if *pending {
            done.synchronize().doing("waiting for the last copy")?;
        }
        p.as_mut_slice().doing("page-locked memory")?.copy_from_slice(host);
        let mut view = dst.slice_mut(0..host.len());
        self.stream.memcpy_htod(&*p, &mut view).doing("copying to the device")?;
        done.record(&self.stream).doing("recording the copy")?;
        *pending = true;
        Ok(())
    }

    /// The first `len` values of `src`, copied to the host (waits for them).
    pub fn download(&self, src: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>, DeviceError> {
        let mut out = vec![0.0f32; len];
        if len > 0 {
            self.stream
                .memcpy_dtoh(&src.slice(0..len), &mut out)
                .doing("copying from the device")?;
        }
        Ok(out)
    }

    /// A descriptor of the first `len` values of `buf` seen as `shape`.
    pub fn desc(&self, buf: &CudaSlice<f32>, shape: &[usize]) -> DeviceTensorDesc {
        use cudarc::driver::DevicePtr;
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        DeviceTensorDesc {
            shape: shape.iter().map(|&d| d as u64).collect(),
            ptr,
            device: self.device(),
            stream: self.stream.cu_stream() as u64,
        }
    }

    /// A buffer view of a tensor someone else owns; it is never freed through this view.
    ///
    /// # Safety
    /// `d.ptr` must point to `d.len()` f32 values on this device that outlive the view.
    pub unsafe fn borrow(&self, d: &DeviceTensorDesc) -> Result<Borrowed, DeviceError> {
        if d.device != self.device() {
            return Err(DeviceError(format!(
                "a tensor on {} given to {}",
                d.device,
                self.device()
            )));
        }
        let len = d.len();
        Ok(Borrowed(ManuallyDrop::new(self.stream.upgrade_device_ptr(d.ptr, len))))
    }
}

/// Compiles CUDA C `src` with NVRTC to machine code (a cubin) for `sm_{ma}{mi}`, so that the
/// driver need not understand the PTX of a newer NVRTC; errors carry NVRTC's log.
fn compile(module: &str, src: &str, ma: i32, mi: i32) -> Result<cudarc::nvrtc::Ptx, DeviceError> {
    use cudarc::nvrtc::{result as nr, sys as ns};
    use std::ffi::CString;
    let code = CString::new(src).map_err(|_| DeviceError("a NUL in kernel source".into()))?;
    let name = CString::new(format!("{module}.cu")).expect("no NUL in a module name");
    let prog = nr::create_program(&code, Some(&name))
        .map_err(|e| DeviceError(format!("NVRTC, kernels `{module}`: {e:?}")))?;
    // no fused multiply-adds: the kernels round as the CPU path does (check-device compares)
    let opts =
        [format!("--gpu-architecture=sm_{ma}{mi}"), "--std=c++17".into(), "--fmad=false".into()];
    // SAFETY: `prog` was created above and is destroyed once, at the end.
    let out = unsafe {
        match nr::compile_program(prog, &opts) {
            Err(e) => {
                let log = nr::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                Err(DeviceError(format!(
                    "compiling kernels `{module}` for sm_{ma}{mi}: {e:?}\n{}",
                    String::from_utf8_lossy(&log)
                )))
            }
            Ok(()) => {
                let mut size = 0usize;
                let mut bin = Vec::new();
                let r = ns::nvrtcGetCUBINSize(prog, &mut size).result().and_then(|_| {
                    bin = vec![0u8; size];
                    ns::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast()).result()
                });
                r.map(|_| cudarc::nvrtc::Ptx::from_binary(bin))
                    .map_err(|e| DeviceError(format!("NVRTC's cubin of `{module}`: {e:?}")))
            }
        }
    };
    // SAFETY: as above.
    let _ = unsafe { nr::destroy_program(prog) };
    out
}

/// Visits a module's parameters in order, each as (values, accumulated gradient) on the host:
/// `&mut |f| net.visit_params(&mut |p| f(&mut p.value, &mut p.grad))` for an SDK module.
pub type VisitParams<'a> = &'a mut dyn FnMut(OnParam<'_>);

/// What [`VisitParams`] calls for each parameter: (values, accumulated gradient).
pub type OnParam<'a> = &'a mut dyn FnMut(&mut Vec<f32>, &mut Vec<f32>);

/// A module's parameters on the device: each one's values and gradient, in the module's
/// order, and the copies to and from the host's `Param`s that the SDK's parameter calls need.
pub struct ParamBuffers {
    /// The values.
    pub values: Vec<CudaSlice<f32>>,
    /// The accumulated gradients (zero after [`ParamBuffers::grads_to_host`]).
    pub grads: Vec<CudaSlice<f32>>,
    lens: Vec<usize>,
}

impl ParamBuffers {
    /// Copies every parameter's values to `gpu`, with zeroed gradients.
    pub fn upload(gpu: &Gpu, visit: VisitParams<'_>) -> Result<ParamBuffers, DeviceError> {
        let (mut values, mut lens, mut failed) = (Vec::new(), Vec::new(), None);
        visit(&mut |v, _| match gpu.upload(v) {
            Ok(b) => {
                values.push(b);
                lens.push(v.len());
            }
            Err(e) => failed = Some(e),
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let grads = lens.iter().map(|&l| gpu.zeros(l)).collect::<Result<Vec<_>, _>>()?;
        Ok(ParamBuffers { values, grads, lens })
    }

    /// The number of parameters.
    pub fn count(&self) -> usize {
        self.lens.len()
    }

    /// Each parameter's values and gradient as descriptors (flat shapes).
    pub fn descs(&self, gpu: &Gpu) -> Vec<DeviceParam> {
        (0..self.lens.len())
            .map(|i| DeviceParam {
                value: gpu.desc(&self.values[i], &[self.lens[i]]),
                grad: gpu.desc(&self.grads[i], &[self.lens[i]]),
            })
            .collect()
    }

    /// Copies the values into the host's parameters.
    pub fn values_to_host(&self, gpu: &Gpu, visit: VisitParams<'_>) -> Result<(), DeviceError> {
        let (mut i, mut failed) = (0, None);
        visit(&mut |v, _| {
            match gpu.download(&self.values[i], self.lens[i]) {
                Ok(d) => *v = d,
                Err(e) => failed = Some(e),
            }
            i += 1;
        });
        failed.map_or(Ok(()), Err)
    }

    /// Copies the host's parameter values to the device.
    pub fn values_to_device(
        &mut self,
        gpu: &Gpu,
        visit: VisitParams<'_>,
    ) -> Result<(), DeviceError> {
        let (mut i, mut failed) = (0, None);
        let values = &mut self.values;
        visit(&mut |v, _| {
            if let Err(e) = gpu.upload_into(v, &mut values[i]) {
                failed = Some(e);
            }
            i += 1;
        });
        failed.map_or(Ok(()), Err)
    }

    /// Adds the gradients into the host's and zeroes them on the device.
    pub fn grads_to_host(&mut self, gpu: &Gpu, visit: VisitParams<'_>) -> Result<(), DeviceError> {
        let (mut i, mut failed) = (0, None);
        let (grads, lens) = (&mut self.grads, &self.lens);
        visit(&mut |_, g| {
            match gpu.download(&grads[i], lens[i]) {
                Ok(d) => g.iter_mut().zip(d).for_each(|(a, b)| *a += b),
                Err(e) => failed = Some(e),
            }
            if let Err(e) = gpu.stream().memset_zeros(&mut grads[i]) {
                failed = Some(DeviceError(e.to_string()));
            }
            i += 1;
        });
        failed.map_or(Ok(()), Err)
    }
}

/// Page-locked buffers for [`Gpu::upload_pinned`], one per length, each with the event of its
/// last copy; dropping it waits for those copies.
#[derive(Default)]
pub struct Staging {
    slots: Vec<(PinnedHostSlice<f32>, CudaEvent, bool)>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (_, e, pending) in &self.slots {
            if *pending {
                let _ = e.synchronize();
            }
        }
    }
}

/// A device buffer owned elsewhere ([`Gpu::borrow`]): usable as a `CudaSlice`, never freed.
pub struct Borrowed(ManuallyDrop<CudaSlice<f32>>);

impl Drop for Borrowed {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `leak` drops the slice's stream reference without freeing
        // the memory, which its owner frees.
        let _ = unsafe { ManuallyDrop::take(&mut self.0) }.leak();
    }
}

impl std::ops::Deref for Borrowed {
    type Target = CudaSlice<f32>;
    fn deref(&self) -> &CudaSlice<f32> {
        &self.0
    }
}

impl std::ops::DerefMut for Borrowed {
    fn deref_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.0
    }
}

/// Launches kernel `$name` of module `$module` (CUDA C source `$src`, compiled on first use
/// by [`Gpu::function`]) on `$gpu`'s stream with launch config `$cfg` and the arguments given
/// (device buffers by reference, scalars by reference); `?` returns a [`DeviceError`].
///
/// The caller vouches, as for any kernel launch, that the arguments match the kernel's
/// parameters in order and type and that the buffers hold what it reads and writes.
#[macro_export]
macro_rules! launch {
    ($gpu:expr, $module:literal, $src:expr, $name:literal, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        use $crate::cudarc::driver::PushKernelArg as _;
        let func = $gpu.function($module, $src, $name)?;
        let mut b = $gpu.stream().launch_builder(&func);
        $( b.arg($arg); )*
        let cfg: $crate::cudarc::driver::LaunchConfig = $cfg;
        // SAFETY: the caller's, as the macro's documentation says.
        unsafe { b.launch(cfg) }
            .map_err(|e| $crate::DeviceError(format!(concat!("launching `", $name, "`: {}"), e)))?;
        Ok::<(), $crate::DeviceError>(())
    }};
}

/// Parses a config's device: `cpu`, `cuda` (device 0) or `cuda:N`.
///
/// ```
/// use latent_abi::{Device, DeviceKind};
/// assert_eq!(latent_cuda::parse_device("cpu").unwrap(), Device::CPU);
/// assert_eq!(latent_cuda::parse_device("cuda:1").unwrap(), Device { kind: DeviceKind::Cuda, ordinal: 1 });
/// assert!(latent_cuda::parse_device("gpu").is_err());
/// ```
pub fn parse_device(s: &str) -> Result<Device, String> {
    let s = s.trim();
    match s {
        "cpu" => return Ok(Device::CPU),
        "cuda" => return Ok(Device { kind: DeviceKind::Cuda, ordinal: 0 }),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        if let Ok(ordinal) = n.parse::<u32>() {
            return Ok(Device { kind: DeviceKind::Cuda, ordinal });
        }
    }
    Err(format!("{s:?} is not a device: write \"cpu\", \"cuda\" or \"cuda:N\" (N = 0, 1, ...)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_is_missing() {
        assert!(OpenError::NoDriver.to_string().contains("libcuda.so.1"));
        let e = OpenError::NoSuchDevice { ordinal: 3, count: 2 }.to_string();
        assert!(
            e.contains("cuda:3") && e.contains("2 CUDA devices") && e.contains("cuda:1"),
            "{e}"
        );
        let e = OpenError::NoSuchDevice { ordinal: 1, count: 1 }.to_string();
        assert!(e.contains("1 CUDA device (cuda:0)"), "{e}");
    }

    #[test]
    fn opening_without_a_driver_is_an_error_not_a_crash() {
        if driver_present() {
            return; // a GPU machine: tests/gpu/run covers it
        }
        assert_eq!(Gpu::open(0).unwrap_err(), OpenError::NoDriver);
        assert_eq!(device_count().unwrap_err(), OpenError::NoDriver);
    }
}
