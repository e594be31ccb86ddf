//! Host-side handles around plugin objects: every [`PluginError`] becomes an `anyhow` error
//! naming the plugin and the call, every call runs under the [`watchdog`](super::watchdog),
//! and what comes back is checked (shapes, lengths, finite values).

use super::registry::pres;
use crate::device::HostDevice;
use abi_stable::std_types::{RErr, ROk, RVec};
use anyhow::{bail, Context as _, Result};
use latent_abi::*;
use latent_cuda::cudarc::driver::CudaSlice;
use latent_cuda::{Gpu, Staging};
use latent_sdk::kit::Tensor;
/// An objective's answer in owned form, the SDK's type: loss, d loss / d views, metrics, τ.
pub use latent_sdk::plugin::ObjectiveResult;
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn to_tensor(plugin: &str, call: &str, d: TensorDesc) -> Result<Tensor> {
    // A shape whose product overflows would panic the host in Tensor::from_desc.
    if d.shape
        .iter()
        .try_fold(1u64, |a, &s| a.checked_mul(s))
        .and_then(|n| usize::try_from(n).ok())
        .is_none()
    {
        bail!("plugin '{plugin}' returned a bad tensor from `{call}`: shape {:?} has more values than can be addressed", d.shape);
    }
    Tensor::from_desc(d)
        .with_context(|| format!("plugin '{plugin}' returned a bad tensor from `{call}`"))
}

fn check_finite(plugin: &str, call: &str, what: &str, data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("plugin '{plugin}' returned a non-finite value ({}) in {what} from `{call}` at index {i}", data[i]);
    }
    Ok(())
}

/// Parameter access shared by encoders and objectives.
pub trait ParamAccess {
    /// Plugin name.
    fn name(&self) -> &str;
    /// Parameter descriptors.
    fn params(&mut self) -> Result<Vec<ParamDesc>>;
    /// All values, in `params` order.
    fn read_params(&mut self) -> Result<Vec<Tensor>>;
    /// Overwrites all values.
    fn write_params(&mut self, values: Vec<Tensor>) -> Result<()>;
    /// Gradients (empty tensors for non-trained), then zeroed.
    fn take_grads(&mut self) -> Result<Vec<Tensor>>;
}

macro_rules! param_access {
    ($t:ty) => {
        impl ParamAccess for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn params(&mut self) -> Result<Vec<ParamDesc>> {
                let _w = super::watchdog::enter(&self.name, "params");
                pres(self.obj.params()).map(RVec::into_vec)
            }
            fn read_params(&mut self) -> Result<Vec<Tensor>> {
                let _w = super::watchdog::enter(&self.name, "read_params");
                let v = pres(self.obj.read_params())?;
                v.into_iter().map(|d| to_tensor(&self.name, "read_params", d)).collect()
            }
            fn write_params(&mut self, values: Vec<Tensor>) -> Result<()> {
                let _w = super::watchdog::enter(&self.name, "write_params");
                pres(self.obj.write_params(values.into_iter().map(Tensor::into_desc).collect()))
            }
            fn take_grads(&mut self) -> Result<Vec<Tensor>> {
                let _w = super::watchdog::enter(&self.name, "take_grads");
                let v = pres(self.obj.take_grads())?;
                let g: Vec<Tensor> = v
                    .into_iter()
                    .map(|d| to_tensor(&self.name, "take_grads", d))
                    .collect::<Result<_>>()?;
                for t in &g {
                    check_finite(&self.name, "take_grads", "a gradient", &t.data)?;
                }
                Ok(g)
            }
        }
    };
}

/// A loaded encoder.
pub struct Encoder {
    /// Plugin name.
    pub name: String,
    obj: EncoderObj,
    dev: Option<OnDevice>,
}

/// An encoder object: with the device calls (a library built with them), or without (an older
/// library: it answers the device calls as a CPU-only encoder would).
enum EncoderObj {
    Plain(EncoderBox),
    Device(DeviceEncoderBox),
}

macro_rules! either {
    ($o:expr, $m:ident($($a:expr),*)) => {
        match $o {
            EncoderObj::Plain(x) => x.$m($($a),*),
            EncoderObj::Device(x) => x.$m($($a),*),
        }
    };
}

impl EncoderObj {
    fn out_dim(&mut self, s: RVec<u64>) -> PResult<u64> {
        either!(self, out_dim(s))
    }
    fn forward(&mut self, x: TensorDesc, train: bool) -> PResult<TensorDesc> {
        either!(self, forward(x, train))
    }
    fn backward(&mut self, g: TensorDesc) -> PResult<()> {
        either!(self, backward(g))
    }
    fn params(&mut self) -> PResult<RVec<ParamDesc>> {
        either!(self, params())
    }
    fn read_params(&mut self) -> PResult<RVec<TensorDesc>> {
        either!(self, read_params())
    }
    fn write_params(&mut self, v: RVec<TensorDesc>) -> PResult<()> {
        either!(self, write_params(v))
    }
    fn take_grads(&mut self) -> PResult<RVec<TensorDesc>> {
        either!(self, take_grads())
    }
    fn bind_device(&mut self, b: DeviceBinding) -> PResult<bool> {
        match self {
            EncoderObj::Plain(_) => ROk(false),
            EncoderObj::Device(x) => x.bind_device(b),
        }
    }
    fn forward_device(&mut self, x: DeviceTensorDesc, train: bool) -> PResult<DeviceTensorDesc> {
        match self {
            EncoderObj::Plain(_) => RErr(cpu_only("forward_device")),
            EncoderObj::Device(e) => e.forward_device(x, train),
        }
    }
    fn backward_device(&mut self, g: DeviceTensorDesc) -> PResult<()> {
        match self {
            EncoderObj::Plain(_) => RErr(cpu_only("backward_device")),
            EncoderObj::Device(e) => e.backward_device(g),
        }
    }
    fn device_params(&mut self) -> PResult<RVec<DeviceParam>> {
        match self {
            EncoderObj::Plain(_) => ROk(RVec::new()),
            EncoderObj::Device(e) => e.device_params(),
        }
    }
}

fn cpu_only(call: &str) -> PluginError {
    PluginError::new(
        ErrorKind::Input,
        "encoder",
        call,
        "built before the device calls: it runs on the cpu only",
    )
}

/// An encoder that accepted the device: the host's input and gradient buffers there, and the
/// time its copies took.
struct OnDevice {
    gpu: Arc<Gpu>,
    images: Staged,
    grad: Staged,
    copy_s: f64,
}

/// A device buffer the host fills through page-locked ones.
#[derive(Default)]
struct Staged {
    pinned: Staging,
    device: Option<CudaSlice<f32>>,
}

/// Copies `t` into `buf` on the device (grown when too small), through page-locked memory,
/// adding the time it took to `copy_s`; the descriptor of the copy there.
fn stage(gpu: &Gpu, buf: &mut Staged, copy_s: &mut f64, t: &Tensor) -> Result<DeviceTensorDesc> {
    let start = Instant::now();
    if buf.device.as_ref().is_none_or(|b| b.len() < t.len()) {
        buf.device = Some(gpu.zeros(t.len())?);
    }
    let dst = buf.device.as_mut().expect("allocated above");
    gpu.upload_pinned(&t.data, &mut buf.pinned, dst)?;
    *copy_s += start.elapsed().as_secs_f64();
    Ok(gpu.desc(dst, &t.shape))
}

impl Encoder {
    /// Wraps an encoder object (loaded, or linked in-process).
    pub fn new(name: &str, obj: EncoderBox) -> Encoder {
        Encoder { name: name.to_string(), obj: EncoderObj::Plain(obj), dev: None }
    }

    /// Wraps an encoder object that has the device calls.
    pub fn with_device_calls(name: &str, obj: DeviceEncoderBox) -> Encoder {
        Encoder { name: name.to_string(), obj: EncoderObj::Device(obj), dev: None }
    }

    /// Offers the run's device. An encoder that refuses a GPU stays on the CPU: the log says
    /// so once per plugin.
    pub fn bind(&mut self, device: &HostDevice) -> Result<()> {
        let HostDevice::Cuda(gpu) = device else { return Ok(()) };
        let _w = super::watchdog::enter(&self.name, "bind_device");
        if pres(self.obj.bind_device(gpu.binding()))? {
            self.dev = Some(OnDevice {
                gpu: gpu.clone(),
                images: Staged::default(),
                grad: Staged::default(),
                copy_s: 0.0,
            });
        } else {
            static SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());
            let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
            if !said.contains(&self.name) {
                said.push(self.name.clone());
                tracing::warn!(
                    "encoder '{}' runs on the cpu only: it stays there on {}, and so does the step",
                    self.name,
                    gpu.device()
                );
            }
        }
        Ok(())
    }

    /// Whether the encoder runs on a GPU.
    pub fn on_device(&self) -> bool {
        self.dev.is_some()
    }

    /// Whether the library built the encoder with the device calls (`DeviceEncoderAbi`); one
    /// built before them has none, and runs on the CPU.
    pub fn has_device_calls(&self) -> bool {
        matches!(self.obj, EncoderObj::Device(_))
    }

    /// The GPU the encoder runs on, if it accepted one.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        self.dev.as_ref().map(|d| &d.gpu)
    }

    /// On a GPU: every parameter's value and gradient buffer there, in `params` order, checked
    /// against `descs` (empty when the encoder does not offer them).
    pub fn device_params(&mut self, descs: &[ParamDesc]) -> Result<Vec<DeviceParam>> {
        let Some(d) = &self.dev else { return Ok(Vec::new()) };
        let _w = super::watchdog::enter(&self.name, "device_params");
        let ps = pres(self.obj.device_params())?.into_vec();
        if ps.is_empty() {
            return Ok(ps);
        }
        if ps.len() != descs.len() {
            bail!(
                "plugin '{}' gave {} device parameters for {} parameters",
                self.name,
                ps.len(),
                descs.len()
            );
        }
        for (p, dsc) in ps.iter().zip(descs) {
            let n = dsc.shape.iter().product::<u64>() as usize;
            let trained = matches!(dsc.role, ParamRole::Weight | ParamRole::NoDecay);
            if trained && p.grad.ptr == 0 && n > 0 {
                bail!(
                    "plugin '{}' gave no device gradient for the trained parameter {}",
                    self.name,
                    dsc.name
                );
            }
            if p.value.len() != n || p.grad.len() != n || p.value.device != d.gpu.device() {
                bail!(
                    "plugin '{}' gave device parameter {} of {} values on {}, expected {n} on {}",
                    self.name,
                    dsc.name,
                    p.value.len(),
                    p.value.device,
                    d.gpu.device()
                );
            }
        }
        Ok(ps)
    }

    /// Seconds spent copying images and gradients to the device and features back, so far.
    pub fn copy_seconds(&self) -> f64 {
        self.dev.as_ref().map_or(0.0, |d| d.copy_s)
    }

    /// Output dimension for images of shape `[C, H, W]`.
    pub fn out_dim(&mut self, shape: [usize; 3]) -> Result<usize> {
        let s: RVec<u64> = shape.iter().map(|&d| d as u64).collect();
        Ok(pres(self.obj.out_dim(s))? as usize)
    }

    /// Forward; checks that `[N, D]` comes back with finite values.
    pub fn forward(&mut self, images: Tensor, train: bool) -> Result<Tensor> {
        let n = images.shape[0];
        let y = if self.dev.is_some() {
            self.forward_on_device(&images, train)?
        } else {
            let w = super::watchdog::enter(&self.name, "forward");
            let y = pres(self.obj.forward(images.into_desc(), train));
            drop(w);
            to_tensor(&self.name, "forward", y?)?
        };
        if y.shape.len() != 2 || y.shape[0] != n {
            bail!(
                "plugin '{}' returned features of shape {:?} from `forward`, expected [{n}, D]",
                self.name,
                y.shape
            );
        }
        check_finite(&self.name, "forward", "the features", &y.data)?;
        Ok(y)
    }

    /// Backward.
    pub fn backward(&mut self, grad: Tensor) -> Result<()> {
        if let Some(d) = self.dev.as_mut() {
            let desc = stage(&d.gpu, &mut d.grad, &mut d.copy_s, &grad)?;
            let _w = super::watchdog::enter(&self.name, "backward_device");
            return pres(self.obj.backward_device(desc));
        }
        let _w = super::watchdog::enter(&self.name, "backward");
        pres(self.obj.backward(grad.into_desc()))
    }

    /// The forward of an encoder on the device: images in, features back, through the
    /// host's buffers.
    fn forward_on_device(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let d = self.dev.as_mut().expect("on a device");
        let desc = stage(&d.gpu, &mut d.images, &mut d.copy_s, images)?;
        let w = super::watchdog::enter(&self.name, "forward_device");
        let y = pres(self.obj.forward_device(desc, train));
        drop(w);
        let y = y?;
        if y.device != d.gpu.device() {
            bail!(
                "plugin '{}' returned features on {} from `forward_device`, expected {}",
                self.name,
                y.device,
                d.gpu.device()
            );
        }
        if y.shape.len() != 2 || y.shape[0] != images.shape[0] as u64 {
            bail!(
                "plugin '{}' returned features of shape {:?} from `forward_device`, expected [{}, D]",
                self.name,
                y.shape.as_slice(),
                images.shape[0]
            );
        }
        let t = Instant::now();
        // SAFETY: the plugin owns the features until its next forward (the ABI's contract).
        let view = unsafe { d.gpu.borrow(&y) }?;
        let data = d.gpu.download(&view, y.len())?;
        d.copy_s += t.elapsed().as_secs_f64();
        Ok(Tensor::new(y.shape.iter().map(|&x| x as usize).collect::<Vec<_>>(), data))
    }
}
param_access!(Encoder);

/// A loaded objective.
pub struct Objective {
    /// Plugin name.
    pub name: String,
    /// Its manifest (needs_labels, needs_target).
    pub manifest: Manifest,
    obj: ObjectiveBox,
}

impl Objective {
    /// Wraps an objective object (loaded, or linked in-process).
    pub fn new(manifest: Manifest, obj: ObjectiveBox) -> Objective {
        Objective { name: manifest.name.to_string(), manifest, obj }
    }

    /// One step; checks the loss is finite and each gradient has its view's shape.
    pub fn compute(
        &mut self,
        views: &[Tensor],
        targets: &[Tensor],
        labels: &[i64],
        step: u64,
        total: u64,
        train: bool,
    ) -> Result<ObjectiveResult> {
        let input = ObjectiveInput {
            views: views.iter().cloned().map(Tensor::into_desc).collect(),
            targets: targets.iter().cloned().map(Tensor::into_desc).collect(),
            labels: labels.iter().copied().collect(),
            step,
            total_steps: total,
            train,
        };
        let w = super::watchdog::enter(&self.name, "compute");
        let out = pres(self.obj.compute(input));
        drop(w);
        let out = out?;
        if !out.loss.is_finite() {
            bail!(
                "plugin '{}' returned a non-finite loss ({}) from `compute` at step {step}",
                self.name,
                out.loss
            );
        }
        let grads: Vec<Tensor> = out
            .grads
            .into_iter()
            .map(|d| to_tensor(&self.name, "compute", d))
            .collect::<Result<_>>()?;
        if train {
            if grads.len() != views.len() {
                bail!(
                    "plugin '{}' returned {} gradients from `compute` for {} views",
                    self.name,
                    grads.len(),
                    views.len()
                );
            }
            for (g, v) in grads.iter().zip(views) {
                if g.shape != v.shape {
                    bail!("plugin '{}' returned a gradient of shape {:?} from `compute` for a view of shape {:?}", self.name, g.shape, v.shape);
                }
                check_finite(&self.name, "compute", "a gradient", &g.data)?;
            }
        }
        Ok(ObjectiveResult {
            loss: out.loss,
            grads,
            metrics: out.metrics.into_iter().map(|m| (m.name.into_string(), m.value)).collect(),
            target_momentum: out.target_momentum,
        })
    }

    /// Tells the objective that epoch `info.epoch` starts (its schedules in epochs). A plugin
    /// built before the call existed answers with the SDK's default, which does nothing.
    pub fn begin_epoch(&mut self, info: latent_abi::EpochInfo) -> Result<()> {
        let w = super::watchdog::enter(&self.name, "begin_epoch");
        let out = pres(self.obj.begin_epoch(info));
        drop(w);
        out
    }
}
param_access!(Objective);

/// A loaded augmentation; cheap to clone and shared by loader threads.
#[derive(Clone)]
pub struct Augment {
    /// Plugin name.
    pub name: String,
    obj: Arc<AugmentationBox>,
}

impl Augment {
    /// Wraps an augmentation object (loaded, or linked in-process).
    pub fn new(name: &str, obj: AugmentationBox) -> Augment {
        Augment { name: name.to_string(), obj: Arc::new(obj) }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, shape: [usize; 3]) -> Result<[usize; 3]> {
        let s: RVec<u64> = shape.iter().map(|&d| d as u64).collect();
        let o = pres(self.obj.output_shape(s))?;
        match o[..] {
            [c, h, w] => Ok([c as usize, h as usize, w as usize]),
            _ => bail!(
                "plugin '{}' returned output shape {:?} from `output_shape`, expected [C, H, W]",
                self.name,
                o
            ),
        }
    }

    /// Applies the augmentation to `[N, C, H, W]` images with one seed per image.
    pub fn apply(&self, images: Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (n, c, h, w) = images.dims4("images")?;
        let o = self.output_shape([c, h, w])?;
        let y = to_tensor(
            &self.name,
            "apply",
            pres(self.obj.apply(images.into_desc(), seeds.iter().copied().collect()))?,
        )?;
        if y.shape != [n, o[0], o[1], o[2]] {
            bail!(
                "plugin '{}' returned shape {:?} from `apply`, expected {:?}",
                self.name,
                y.shape,
                [n, o[0], o[1], o[2]]
            );
        }
        check_finite(&self.name, "apply", "the images", &y.data)?;
        Ok(y)
    }
}
