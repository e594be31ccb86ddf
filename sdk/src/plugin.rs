//! What a plugin author implements: [`Plugin`] plus one of [`ObjectivePlugin`],
//! [`EncoderPlugin`], [`AugmentationPlugin`]; and the SDK's wrappers that turn those into ABI
//! objects.
//!
//! The wrappers are the only code that runs on the plugin side of the boundary: they convert
//! descriptors to [`Tensor`]s, parse the config with serde (unknown keys refused), and run every
//! call under `catch_unwind`, so a panic becomes a [`PluginError`] naming the plugin and the
//! call (abi_stable would otherwise abort the process). After a panic the instance is
//! *poisoned*: later calls return [`ErrorKind::Poisoned`] instead of touching broken state.

use crate::abi::*;
use crate::autodiff::{Graph, Var};
use crate::kit::{Module, Param, Tensor};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString, RVec};
use serde::{de::DeserializeOwned, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

/// What every plugin has: a name, a one-line description and a serde config.
pub trait Plugin: Sized + Send + 'static {
    /// The config, parsed from JSON. Use `#[serde(default, deny_unknown_fields)]` so that
    /// omitted keys take their defaults and unknown keys are refused by name.
    type Config: Serialize + DeserializeOwned + Default;
    /// Unique plugin name (`simclr`).
    const NAME: &'static str;
    /// One line for `latent plugins`.
    const DESCRIPTION: &'static str;
    /// Builds an instance. Validate the config here and return errors a user can act on.
    fn new(config: Self::Config, ctx: &Context) -> anyhow::Result<Self>;
}

/// Inputs of one objective step, as kit tensors.
pub struct ObjectiveBatch {
    /// Online embeddings of each view, `[B, D]`.
    pub views: Vec<Tensor>,
    /// Target-network embeddings of each view (if `NEEDS_TARGET`).
    pub targets: Vec<Tensor>,
    /// Labels (if `NEEDS_LABELS`).
    pub labels: Vec<i64>,
    /// Current step from 0.
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Training or evaluation.
    pub train: bool,
}

impl ObjectiveBatch {
    /// A training batch without labels: `views` and `targets` at `step` of `total_steps`.
    pub fn training(views: Vec<Tensor>, targets: Vec<Tensor>, step: u64, total_steps: u64) -> Self {
        ObjectiveBatch { views, targets, labels: Vec::new(), step, total_steps, train: true }
    }
}

/// Result of one objective step.
pub struct ObjectiveResult {
    /// The loss.
    pub loss: f32,
    /// d loss / d views, one per view (empty when not training).
    pub grads: Vec<Tensor>,
    /// Named metrics.
    pub metrics: Vec<(String, f64)>,
    /// EMA rate for the target network after this step (1.0 when there is none).
    pub target_momentum: f64,
}

/// An objective: loss over the embeddings of the views, with its own heads.
pub trait ObjectivePlugin: Plugin + Module {
    /// Needs class labels (the host samples P x K class-balanced batches).
    const NEEDS_LABELS: bool = false;
    /// Needs target-network embeddings (the host keeps an EMA copy of the encoder).
    const NEEDS_TARGET: bool = false;
    /// Heads forward, loss, heads backward; returns d loss / d views.
    fn compute(&mut self, batch: ObjectiveBatch) -> anyhow::Result<ObjectiveResult>;
    /// The host is about to run epoch `info.epoch` (see [`EpochInfo`]). Default: nothing.
    fn begin_epoch(&mut self, info: EpochInfo) -> anyhow::Result<()> {
        let _ = info;
        Ok(())
    }
}

/// An encoder: `[N, C, H, W]` images to `[N, D]` features.
pub trait EncoderPlugin: Plugin + Module {
    /// Output dimension for an input of shape `[C, H, W]`; an error if the shape cannot work.
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize>;
    /// Forward pass (keeps what backward needs when `train`).
    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor>;
    /// Accumulates parameter gradients for d loss / d features of the last training forward.
    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()>;

    /// Offers the host's CUDA device (see `latent_cuda::Gpu::from_binding`). Return `true` to
    /// run there from now on: the host then calls [`forward_device`](Self::forward_device) and
    /// [`backward_device`](Self::backward_device), and the parameters live on the device, moved
    /// to and from the [`Module`]'s `Param`s by the three `*_host`/`*_device` calls below.
    /// Default: `false`, the encoder stays on the CPU and the host copies.
    fn bind_device(&mut self, binding: DeviceBinding) -> anyhow::Result<bool> {
        let _ = binding;
        Ok(false)
    }
    /// [`forward`](Self::forward) with images and features in device memory.
    fn forward_device(
        &mut self,
        images: DeviceTensorDesc,
        train: bool,
    ) -> anyhow::Result<DeviceTensorDesc> {
        let _ = (images, train);
        anyhow::bail!("{} runs on the cpu only", Self::NAME)
    }
    /// [`backward`](Self::backward) with d loss / d features in device memory.
    fn backward_device(&mut self, grad: DeviceTensorDesc) -> anyhow::Result<()> {
        let _ = grad;
        anyhow::bail!("{} runs on the cpu only", Self::NAME)
    }
    /// On a device: copy the parameter values (buffers included) into the `Param`s. The SDK
    /// calls it before it reads them (`read_params`).
    fn params_to_host(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// On a device: copy the `Param`s' values to the device. The SDK calls it after it wrote
    /// them (`write_params`).
    fn params_to_device(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// On a device: add the accumulated gradients into the `Param`s' `grad` and zero them on
    /// the device. The SDK calls it before it takes the gradients (`take_grads`).
    fn grads_to_host(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// On a device: every parameter's value and gradient buffer there, in `visit_params`
    /// order, for the host's optimizer to update in place (the ABI's `device_params`).
    /// Default: none, the host moves parameters through the three calls above.
    fn device_params(&mut self) -> anyhow::Result<Vec<DeviceParam>> {
        Ok(Vec::new())
    }
}

/// An augmentation: a pure function of one image `[C, H, W]` and a seed.
pub trait AugmentationPlugin: Plugin + Sync {
    /// Output shape for an input shape `[C, H, W]`.
    fn output_shape(&self, input: [usize; 3]) -> anyhow::Result<[usize; 3]>;
    /// Transforms one image (values in [0, 1]) with randomness drawn from `seed` alone.
    fn apply(&self, image: &[f32], shape: [usize; 3], seed: u64) -> anyhow::Result<Vec<f32>>;
}

// ---------------------------------------------------------------------------------------------
// Forward-only authoring: the SDK's autodiff does the backward

/// Inputs of one objective step, on the tape ([`Objective::forward`]).
pub struct Views {
    /// Online embeddings of each view, `[B, D]`, traced: the SDK returns their gradients.
    pub views: Vec<Var>,
    /// Target-network embeddings of each view (if `NEEDS_TARGET`): constants on a graph that
    /// records nothing (`targets[k].graph()`), so a target head run on that graph costs no
    /// backward.
    pub targets: Vec<Var>,
    /// Labels (if `NEEDS_LABELS`).
    pub labels: Vec<i64>,
    /// Current step from 0.
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Training or evaluation.
    pub train: bool,
}

impl Views {
    /// Checks the usual shape of a two-view objective's inputs, each error naming `plugin`:
    /// exactly `count` views (and as many targets when `targets`), every view and target with
    /// `dim` features and the rows of view 0, and at least `min_rows` rows in training (2 for a
    /// batch-norm or a variance over the batch).
    pub fn expect(
        &self,
        plugin: &str,
        count: usize,
        targets: bool,
        dim: usize,
        min_rows: usize,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.views.len() == count,
            "{plugin} needs exactly {count} views, got {}",
            self.views.len()
        );
        if targets {
            anyhow::ensure!(self.targets.len() == count, "{plugin} needs the target-encoder output of all {count} views, got {} target tensors", self.targets.len());
        }
        self.expect_shapes(plugin, targets, dim, min_rows)
    }

    /// The shape half of [`Views::expect`], for objectives whose number of views varies (DINO:
    /// 2 or more views, targets for the first few): every view (and target, when `targets`)
    /// has `dim` features and the rows of view 0, and there are at least `min_rows` rows in
    /// training.
    pub fn expect_shapes(
        &self,
        plugin: &str,
        targets: bool,
        dim: usize,
        min_rows: usize,
    ) -> anyhow::Result<()> {
        let rows = self.views.first().map_or(0, |v| v.rows());
        let named = self.views.iter().enumerate().map(|(i, v)| (format!("view {i}"), v));
        let named = named.chain(
            self.targets
                .iter()
                .enumerate()
                .filter(|_| targets)
                .map(|(i, v)| (format!("target {i}"), v)),
        );
        for (what, v) in named {
            let (n, d) = v.dims();
            anyhow::ensure!(d == dim, "{what} has {d} features but input_dim is {dim}");
            anyhow::ensure!(n == rows, "{what} has {n} rows, view 0 has {rows}");
        }
        anyhow::ensure!(
            rows >= min_rows || !self.train,
            "{plugin} needs at least {min_rows} samples per batch in training, got {rows}"
        );
        Ok(())
    }
}

/// What an objective's forward returns: the scalar loss on the tape, metrics computed on
/// values, and the EMA rate of the target network.
pub struct Loss {
    /// The `[1, 1]` loss.
    pub loss: Var,
    /// Named metrics (the SDK adds `loss` if absent).
    pub metrics: Vec<(String, f64)>,
    /// EMA rate for the target network after this step (1.0: none).
    pub target_momentum: f64,
}

impl Loss {
    /// A loss with no metrics and no target network.
    pub fn new(loss: Var) -> Loss {
        Loss { loss, metrics: Vec::new(), target_momentum: 1.0 }
    }
    /// Adds a metric.
    pub fn metric(mut self, name: &str, value: f64) -> Loss {
        self.metrics.push((name.to_string(), value));
        self
    }
    /// Sets the target network's EMA rate.
    pub fn target_momentum(mut self, tau: f64) -> Loss {
        self.target_momentum = tau;
        self
    }
}

/// An objective written as its forward maths: views in, scalar loss out. The SDK traces the
/// views, runs backward, returns d loss / d views to the host and adds each parameter's
/// gradient to the [`Param`] of the same name (take parameters onto the tape with
/// [`Graph::param`] or the layers of [`crate::autodiff::nn`]). Every such type is an
/// [`ObjectivePlugin`].
pub trait Objective: Plugin + Module {
    /// Needs class labels (the host samples P x K class-balanced batches).
    const NEEDS_LABELS: bool = false;
    /// Needs target-network embeddings (the host keeps an EMA copy of the encoder).
    const NEEDS_TARGET: bool = false;
    /// The loss of one batch.
    fn forward(&mut self, g: &Graph, batch: &Views) -> anyhow::Result<Loss>;
    /// The host is about to run epoch `info.epoch`: keep it for schedules counted in epochs
    /// (DINO's teacher temperature and `freeze_last_layer`). Default: nothing.
    fn begin_epoch(&mut self, info: EpochInfo) -> anyhow::Result<()> {
        let _ = info;
        Ok(())
    }
}

impl<T: Objective> ObjectivePlugin for T {
    const NEEDS_LABELS: bool = <T as Objective>::NEEDS_LABELS;
    const NEEDS_TARGET: bool = <T as Objective>::NEEDS_TARGET;

    fn begin_epoch(&mut self, info: EpochInfo) -> anyhow::Result<()> {
        <T as Objective>::begin_epoch(self, info)
    }

    fn compute(&mut self, b: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> {
        let g = if b.train { Graph::new(true) } else { Graph::no_grad(false) };
        let shapes: Vec<Vec<usize>> = b.views.iter().map(|v| v.shape.clone()).collect();
        let views = b.views.iter().map(|v| g.input(v)).collect::<anyhow::Result<Vec<_>>>()?;
        let tg = Graph::no_grad(b.train);
        let targets =
            b.targets.iter().map(|v| tg.constant(v)).collect::<anyhow::Result<Vec<_>>>()?;
        let batch = Views {
            views,
            targets,
            labels: b.labels,
            step: b.step,
            total_steps: b.total_steps,
            train: b.train,
        };
        let out = crate::autodiff::catch_op_errors(|| self.forward(&g, &batch))?;
        let loss = out.loss.values();
        anyhow::ensure!(
            loss.len() == 1,
            "the loss must be a scalar [1, 1], got {:?}",
            out.loss.dims()
        );
        let mut metrics = out.metrics;
        if !metrics.iter().any(|(n, _)| n == "loss") {
            metrics.insert(0, ("loss".to_string(), loss[0] as f64));
        }
        let grads = if b.train {
            let mut gr = crate::autodiff::catch_op_errors(|| g.backward(&out.loss))?;
            gr.add_to_params(self);
            batch.views.iter().zip(&shapes).map(|(v, s)| gr.tensor(v, s)).collect()
        } else {
            Vec::new()
        };
        Ok(ObjectiveResult { loss: loss[0], grads, metrics, target_momentum: out.target_momentum })
    }
}

/// An encoder written as its forward maths on the tape; wrap it in [`Taped`] to export it.
pub trait Encoder: Plugin + Module {
    /// Output dimension for an input of shape `[C, H, W]`; an error if the shape cannot work.
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize>;
    /// Images `[N, C·H·W]` (with `chw = [C, H, W]`) to features `[N, D]`.
    fn forward(&mut self, g: &Graph, images: &Var, chw: [usize; 3]) -> anyhow::Result<Var>;
}

/// An [`Encoder`] as an [`EncoderPlugin`]: keeps the tape of the last training forward and runs
/// it backward from the host's d loss / d features. `export_plugins!(encoders: [Taped<MyNet>])`.
pub struct Taped<E> {
    /// The encoder.
    pub inner: E,
    last: Option<(Graph, Var)>,
}

// SAFETY: `Graph` is an `Rc`, and every clone of the one in `last` (the graph and the Vars on
// it) lives inside `last`: none escapes a call. Moving the whole `Taped` to another thread
// moves all of them together, so no reference count is ever touched from two threads.
unsafe impl<E: Send> Send for Taped<E> {}

impl<E: Encoder> Plugin for Taped<E> {
    type Config = E::Config;
    const NAME: &'static str = E::NAME;
    const DESCRIPTION: &'static str = E::DESCRIPTION;
    fn new(config: Self::Config, ctx: &Context) -> anyhow::Result<Self> {
        Ok(Taped { inner: E::new(config, ctx)?, last: None })
    }
}

impl<E: Encoder> Module for Taped<E> {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.inner.visit_params(f)
    }
}

impl<E: Encoder> EncoderPlugin for Taped<E> {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.inner.out_dim(input)
    }
    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (_, c, h, w) = images.dims4("images")?;
        let g = if train { Graph::new(true) } else { Graph::no_grad(false) };
        let x = g.input(&images)?;
        let y = crate::autodiff::catch_op_errors(|| self.inner.forward(&g, &x, [c, h, w]))?;
        let out = y.value();
        self.last = train.then_some((g, y));
        Ok(out)
    }
    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        let (g, y) = self
            .last
            .take()
            .ok_or_else(|| anyhow::anyhow!("backward without a training forward before it"))?;
        let mut gr = crate::autodiff::catch_op_errors(|| g.backward_from(&y, &grad))?;
        gr.add_to_params(&mut self.inner);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Boundary guards

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(e) = p.downcast_ref::<crate::autodiff::OpError>() {
        e.0.clone()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f` for `plugin`'s `call`: a panic or error becomes a [`PluginError`]; a panic also
/// sets `poison` (when given) so the instance refuses later calls.
pub fn guard<T>(
    plugin: &str,
    call: &str,
    poison: Option<&AtomicBool>,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, PluginError> {
    if poison.is_some_and(|p| p.load(Ordering::SeqCst)) {
        return RErr(PluginError::new(ErrorKind::Poisoned, plugin, call, "poisoned"));
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(p) => {
            if let Some(p) = poison {
                p.store(true, Ordering::SeqCst);
            }
            RErr(PluginError::new(ErrorKind::Panicked, plugin, call, panic_message(p)))
        }
    }
}

fn failed<'a>(plugin: &'a str, call: &'a str) -> impl Fn(anyhow::Error) -> PluginError + 'a {
    move |e| PluginError::new(ErrorKind::Failed, plugin, call, format!("{e:#}"))
}

fn input_err<'a>(plugin: &'a str, call: &'a str) -> impl Fn(anyhow::Error) -> PluginError + 'a {
    move |e| PluginError::new(ErrorKind::Input, plugin, call, format!("{e:#}"))
}

/// Parses a plugin config from JSON (`""` or `null` means all defaults), refusing unknown keys.
pub fn parse_config<C: DeserializeOwned + Default>(
    plugin: &str,
    json: &str,
) -> Result<C, PluginError> {
    let json = json.trim();
    if json.is_empty() || json == "null" {
        return Ok(C::default());
    }
    serde_json::from_str(json).map_err(|e| PluginError::new(ErrorKind::Config, plugin, "new", e))
}

/// The manifest of plugin `P` of kind `kind` (the export macro supplies the crate version).
pub fn manifest<P: Plugin>(
    kind: PluginKind,
    version: &str,
    needs_labels: bool,
    needs_target: bool,
) -> Manifest {
    Manifest {
        name: P::NAME.into(),
        kind,
        version: version.into(),
        description: P::DESCRIPTION.into(),
        default_config: serde_json::to_string(&P::Config::default()).unwrap_or_default().into(),
        needs_labels,
        needs_target,
    }
}

fn build<P: Plugin>(config: RStr<'_>, ctx: &Context) -> Result<P, PluginError> {
    let cfg = parse_config::<P::Config>(P::NAME, config.as_str())?;
    P::new(cfg, ctx)
        .map_err(|e| PluginError::new(ErrorKind::Config, P::NAME, "new", format!("{e:#}")))
}

// -- parameters, shared by objectives and encoders --------------------------------------------

fn param_descs<M: Module>(m: &mut M) -> RVec<ParamDesc> {
    let mut out = RVec::new();
    m.visit_params(&mut |p: &mut Param| {
        out.push(ParamDesc {
            name: p.name.as_str().into(),
            shape: p.shape.iter().map(|&d| d as u64).collect(),
            role: p.role,
            ema_of: p.ema_of.as_deref().map(RString::from).into(),
        })
    });
    out
}

fn read_params<M: Module>(m: &mut M) -> RVec<TensorDesc> {
    let mut out = RVec::new();
    m.visit_params(&mut |p| out.push(Tensor::new(p.shape.clone(), p.value.clone()).into_desc()));
    out
}

fn write_params<M: Module>(
    name: &str,
    m: &mut M,
    values: RVec<TensorDesc>,
) -> Result<(), PluginError> {
    let mut values = values.into_iter();
    let mut err = None;
    let mut count = 0;
    m.visit_params(&mut |p| {
        count += 1;
        if err.is_some() {
            return;
        }
        match values.next().map(Tensor::from_desc) {
            None => err = Some(format!("too few values: nothing for parameter {}", p.name)),
            Some(Err(e)) => err = Some(format!("parameter {}: {e:#}", p.name)),
            Some(Ok(t)) if t.shape != p.shape => {
                err =
                    Some(format!("parameter {} has shape {:?}, got {:?}", p.name, p.shape, t.shape))
            }
            Some(Ok(t)) => p.value = t.data,
        }
    });
    if err.is_none() && values.next().is_some() {
        err = Some(format!("more values than the {count} parameters"));
    }
    match err {
        Some(e) => Err(PluginError::new(ErrorKind::Input, name, "write_params", e)),
        None => Ok(()),
    }
}

fn take_grads<M: Module>(m: &mut M) -> RVec<TensorDesc> {
    let mut out = RVec::new();
    m.visit_params(&mut |p| {
        if p.trainable() && !p.frozen {
            let g = std::mem::replace(&mut p.grad, vec![0.0; p.value.len()]);
            out.push(Tensor::new(p.shape.clone(), g).into_desc());
        } else {
            // not trained, or frozen for now (`Param::frozen`): no gradient, and none kept
            p.grad.iter_mut().for_each(|g| *g = 0.0);
            out.push(Tensor::new(vec![0], vec![]).into_desc());
        }
    });
    out
}

// -- the wrapper of every kind -------------------------------------------------------------------

/// A plugin of any kind as an ABI object: every call runs under [`guard`], and a panic poisons
/// the instance. It implements [`ObjectiveAbi`], [`EncoderAbi`] or [`AugmentationAbi`] for a
/// plugin of that kind.
pub struct Wrapped<P> {
    inner: P,
    poisoned: AtomicBool,
}

impl<P: Plugin> Wrapped<P> {
    /// Parses the config and builds the plugin (errors are [`ErrorKind::Config`]).
    fn build(config: RStr<'_>, ctx: &Context) -> Result<Self, PluginError> {
        Ok(Wrapped { inner: build::<P>(config, ctx)?, poisoned: AtomicBool::new(false) })
    }

    /// Runs `f` on the plugin for `call` (a `&mut self` call).
    fn g<T>(&mut self, call: &str, f: impl FnOnce(&mut P) -> Result<T, PluginError>) -> PResult<T> {
        let inner = &mut self.inner;
        guard(P::NAME, call, Some(&self.poisoned), || f(inner))
    }

    /// Runs `f` on the plugin for `call` (a `&self` call: augmentations).
    fn g_ref<T>(&self, call: &str, f: impl FnOnce(&P) -> Result<T, PluginError>) -> PResult<T> {
        guard(P::NAME, call, Some(&self.poisoned), || f(&self.inner))
    }
}

/// The parameter calls, the same for objectives and encoders.
macro_rules! param_calls {
    () => {
        fn params(&mut self) -> PResult<RVec<ParamDesc>> {
            self.g("params", |p| Ok(param_descs(p)))
        }
        fn read_params(&mut self) -> PResult<RVec<TensorDesc>> {
            self.g("read_params", |p| Ok(read_params(p)))
        }
        fn write_params(&mut self, values: RVec<TensorDesc>) -> PResult<()> {
            self.g("write_params", |p| write_params(P::NAME, p, values))
        }
        fn take_grads(&mut self) -> PResult<RVec<TensorDesc>> {
            self.g("take_grads", |p| Ok(take_grads(p)))
        }
    };
}

// -- objectives --------------------------------------------------------------------------------

impl<P: ObjectivePlugin> ObjectiveAbi for Wrapped<P> {
    fn compute(&mut self, input: ObjectiveInput) -> PResult<ObjectiveOutput> {
        self.g("compute", |p| {
            let conv = |v: RVec<TensorDesc>| {
                v.into_iter().map(Tensor::from_desc).collect::<anyhow::Result<Vec<_>>>()
            };
            let batch = ObjectiveBatch {
                views: conv(input.views).map_err(input_err(P::NAME, "compute"))?,
                targets: conv(input.targets).map_err(input_err(P::NAME, "compute"))?,
                labels: input.labels.into_vec(),
                step: input.step,
                total_steps: input.total_steps,
                train: input.train,
            };
            let r = p.compute(batch).map_err(failed(P::NAME, "compute"))?;
            Ok(ObjectiveOutput {
                loss: r.loss,
                grads: r.grads.into_iter().map(Tensor::into_desc).collect(),
                metrics: r
                    .metrics
                    .into_iter()
                    .map(|(name, value)| Metric { name: name.into(), value })
                    .collect(),
                target_momentum: r.target_momentum,
            })
        })
    }
    param_calls!();
    fn begin_epoch(&mut self, info: EpochInfo) -> PResult<()> {
        self.g("begin_epoch", |p| p.begin_epoch(info).map_err(failed(P::NAME, "begin_epoch")))
    }
}

/// Builds objective `P` from a JSON config as an ABI object (used by the export macro, and by
/// hosts that link a plugin in-process).
pub fn new_objective<P: ObjectivePlugin>(config: RStr<'_>, ctx: &Context) -> PResult<ObjectiveBox> {
    guard(P::NAME, "new", None, || {
        Ok(ObjectiveAbi_TO::from_value(Wrapped::<P>::build(config, ctx)?, TD_Opaque))
    })
}

// -- encoders ----------------------------------------------------------------------------------

fn dims3(v: &[u64], plugin: &str, call: &str) -> Result<[usize; 3], PluginError> {
    match v {
        [c, h, w] => Ok([*c as usize, *h as usize, *w as usize]),
        _ => Err(PluginError::new(
            ErrorKind::Input,
            plugin,
            call,
            format!("expected an image shape [C, H, W], got {v:?}"),
        )),
    }
}

impl<P: EncoderPlugin> EncoderAbi for Wrapped<P> {
    fn out_dim(&mut self, input: RVec<u64>) -> PResult<u64> {
        self.g("out_dim", |p| {
            let s = dims3(&input, P::NAME, "out_dim")?;
            p.out_dim(s).map(|d| d as u64).map_err(input_err(P::NAME, "out_dim"))
        })
    }
    fn forward(&mut self, images: TensorDesc, train: bool) -> PResult<TensorDesc> {
        self.g("forward", |p| {
            let x = Tensor::from_desc(images).map_err(input_err(P::NAME, "forward"))?;
            p.forward(x, train).map(Tensor::into_desc).map_err(failed(P::NAME, "forward"))
        })
    }
    fn backward(&mut self, grad: TensorDesc) -> PResult<()> {
        self.g("backward", |p| {
            let g = Tensor::from_desc(grad).map_err(input_err(P::NAME, "backward"))?;
            p.backward(g).map_err(failed(P::NAME, "backward"))
        })
    }
    fn params(&mut self) -> PResult<RVec<ParamDesc>> {
        self.g("params", |p| Ok(param_descs(p)))
    }
    fn read_params(&mut self) -> PResult<RVec<TensorDesc>> {
        self.g("read_params", |p| {
            p.params_to_host().map_err(failed(P::NAME, "read_params"))?;
            Ok(read_params(p))
        })
    }
    fn write_params(&mut self, values: RVec<TensorDesc>) -> PResult<()> {
        self.g("write_params", |p| {
            write_params(P::NAME, p, values)?;
            p.params_to_device().map_err(failed(P::NAME, "write_params"))
        })
    }
    fn take_grads(&mut self) -> PResult<RVec<TensorDesc>> {
        self.g("take_grads", |p| {
            p.grads_to_host().map_err(failed(P::NAME, "take_grads"))?;
            Ok(take_grads(p))
        })
    }
}

/// The same encoder with the device calls ([`DeviceEncoderAbi`]): the encoder calls as above,
/// then the device ones.
impl<P: EncoderPlugin> DeviceEncoderAbi for Wrapped<P> {
    fn out_dim(&mut self, input: RVec<u64>) -> PResult<u64> {
        EncoderAbi::out_dim(self, input)
    }
    fn forward(&mut self, images: TensorDesc, train: bool) -> PResult<TensorDesc> {
        EncoderAbi::forward(self, images, train)
    }
    fn backward(&mut self, grad: TensorDesc) -> PResult<()> {
        EncoderAbi::backward(self, grad)
    }
    fn params(&mut self) -> PResult<RVec<ParamDesc>> {
        EncoderAbi::params(self)
    }
    fn read_params(&mut self) -> PResult<RVec<TensorDesc>> {
        EncoderAbi::read_params(self)
    }
    fn write_params(&mut self, values: RVec<TensorDesc>) -> PResult<()> {
        EncoderAbi::write_params(self, values)
    }
    fn take_grads(&mut self) -> PResult<RVec<TensorDesc>> {
        EncoderAbi::take_grads(self)
    }
    fn bind_device(&mut self, binding: DeviceBinding) -> PResult<bool> {
        self.g("bind_device", |p| p.bind_device(binding).map_err(failed(P::NAME, "bind_device")))
    }
    fn forward_device(
        &mut self,
        images: DeviceTensorDesc,
        train: bool,
    ) -> PResult<DeviceTensorDesc> {
        self.g("forward_device", |p| {
            p.forward_device(images, train).map_err(failed(P::NAME, "forward_device"))
        })
    }
    fn backward_device(&mut self, grad: DeviceTensorDesc) -> PResult<()> {
        self.g("backward_device", |p| {
            p.backward_device(grad).map_err(failed(P::NAME, "backward_device"))
        })
    }
    fn device_params(&mut self) -> PResult<RVec<DeviceParam>> {
        self.g("device_params", |p| {
            p.device_params().map(RVec::from).map_err(failed(P::NAME, "device_params"))
        })
    }
}

/// Builds encoder `P` with the device calls (used by the export macro's [`DeviceFns`]).
pub fn new_device_encoder<P: EncoderPlugin>(
    config: RStr<'_>,
    ctx: &Context,
) -> PResult<DeviceEncoderBox> {
    guard(P::NAME, "new", None, || {
        Ok(DeviceEncoderAbi_TO::from_value(Wrapped::<P>::build(config, ctx)?, TD_Opaque))
    })
}

/// Builds encoder `P` from a JSON config as an ABI object.
pub fn new_encoder<P: EncoderPlugin>(config: RStr<'_>, ctx: &Context) -> PResult<EncoderBox> {
    guard(P::NAME, "new", None, || {
        Ok(EncoderAbi_TO::from_value(Wrapped::<P>::build(config, ctx)?, TD_Opaque))
    })
}

// -- augmentations -----------------------------------------------------------------------------

impl<P: AugmentationPlugin> AugmentationAbi for Wrapped<P> {
    fn output_shape(&self, input: RVec<u64>) -> PResult<RVec<u64>> {
        self.g_ref("output_shape", |p| {
            let s = dims3(&input, P::NAME, "output_shape")?;
            let o = p.output_shape(s).map_err(input_err(P::NAME, "output_shape"))?;
            Ok(o.iter().map(|&d| d as u64).collect())
        })
    }
    fn apply(&self, images: TensorDesc, seeds: RVec<u64>) -> PResult<TensorDesc> {
        self.g_ref("apply", |p| {
            let x = Tensor::from_desc(images).map_err(input_err(P::NAME, "apply"))?;
            let (n, c, h, w) = x.dims4("images").map_err(input_err(P::NAME, "apply"))?;
            if seeds.len() != n {
                return Err(PluginError::new(
                    ErrorKind::Input,
                    P::NAME,
                    "apply",
                    format!("{n} images but {} seeds", seeds.len()),
                ));
            }
            let o = p.output_shape([c, h, w]).map_err(input_err(P::NAME, "apply"))?;
            let per = c * h * w;
            let mut data = Vec::with_capacity(n * o.iter().product::<usize>());
            for (i, &seed) in seeds.iter().enumerate() {
                let y = p
                    .apply(&x.data[i * per..(i + 1) * per], [c, h, w], seed)
                    .map_err(failed(P::NAME, "apply"))?;
                if y.len() != o.iter().product::<usize>() {
                    return Err(PluginError::new(
                        ErrorKind::Failed,
                        P::NAME,
                        "apply",
                        format!("produced {} values for output shape {o:?}", y.len()),
                    ));
                }
                data.extend_from_slice(&y);
            }
            Ok(Tensor::new(vec![n, o[0], o[1], o[2]], data).into_desc())
        })
    }
}

/// Builds augmentation `P` from a JSON config as an ABI object.
pub fn new_augmentation<P: AugmentationPlugin>(
    config: RStr<'_>,
    ctx: &Context,
) -> PResult<AugmentationBox> {
    guard(P::NAME, "new", None, || {
        Ok(AugmentationAbi_TO::from_value(Wrapped::<P>::build(config, ctx)?, TD_Opaque))
    })
}

/// The error a library returns for a name it does not export.
pub fn not_found(kind: PluginKind, name: RStr<'_>) -> PluginError {
    PluginError::new(
        ErrorKind::NotFound,
        name.as_str(),
        "new",
        format!("this library exports no {} of that name", kind.as_str()),
    )
}

/// Exports a plugin library: one line at the root of a `cdylib` crate.
///
/// ```ignore
/// latent_sdk::export_plugins!(objectives: [SimClr], encoders: [], augmentations: []);
/// ```
/// The crate needs `abi_stable` as a dependency too (its root-module attribute names it).
///
/// The root module is a `#[no_mangle]` symbol, so a binary that links two plugin crates as
/// rlibs gets it twice: `bench/build.rs` shows how such a binary keeps one copy. The plugin
/// types stay usable in-process through [`new_objective`] and friends.
#[macro_export]
macro_rules! export_plugins {
    (objectives: [$($o:ty),* $(,)?], encoders: [$($e:ty),* $(,)?], augmentations: [$($a:ty),* $(,)?] $(,)?) => {
        #[allow(dead_code, unused_imports)]
        mod __latent_export {
        use super::*;
        #[::abi_stable::export_root_module]
        pub fn __latent_root_module() -> $crate::abi::PluginLibRef {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::PluginLib {
                abi_version: ::abi_stable::std_types::RStr::from_str($crate::abi::ABI_VERSION),
                manifests: __latent_manifests,
                new_objective: __latent_new_objective,
                new_encoder: __latent_new_encoder,
                new_augmentation: __latent_new_augmentation,
            }
            .leak_into_prefix()
        }

        extern "C" fn __latent_manifests() -> $crate::abi::PResult<::abi_stable::std_types::RVec<$crate::abi::Manifest>> {
            $crate::plugin::guard("<library>", "manifests", None, || {
                let v = env!("CARGO_PKG_VERSION");
                #[allow(unused_mut)]
                let mut m = ::abi_stable::std_types::RVec::new();
                $( m.push($crate::plugin::manifest::<$o>($crate::abi::PluginKind::Objective, v,
                    <$o as $crate::plugin::ObjectivePlugin>::NEEDS_LABELS, <$o as $crate::plugin::ObjectivePlugin>::NEEDS_TARGET)); )*
                $( m.push($crate::plugin::manifest::<$e>($crate::abi::PluginKind::Encoder, v, false, false)); )*
                $( m.push($crate::plugin::manifest::<$a>($crate::abi::PluginKind::Augmentation, v, false, false)); )*
                Ok(m)
            })
        }

        extern "C" fn __latent_new_objective(
            name: ::abi_stable::std_types::RStr<'_>, config: ::abi_stable::std_types::RStr<'_>, ctx: &$crate::abi::Context,
        ) -> $crate::abi::PResult<$crate::abi::ObjectiveBox> {
            $( if name.as_str() == <$o as $crate::plugin::Plugin>::NAME { return $crate::plugin::new_objective::<$o>(config, ctx); } )*
            let _ = (config, ctx);
            ::abi_stable::std_types::RErr($crate::plugin::not_found($crate::abi::PluginKind::Objective, name))
        }

        extern "C" fn __latent_new_encoder(
            name: ::abi_stable::std_types::RStr<'_>, config: ::abi_stable::std_types::RStr<'_>, ctx: &$crate::abi::Context,
        ) -> $crate::abi::PResult<$crate::abi::EncoderBox> {
            $( if name.as_str() == <$e as $crate::plugin::Plugin>::NAME { return $crate::plugin::new_encoder::<$e>(config, ctx); } )*
            let _ = (config, ctx);
            ::abi_stable::std_types::RErr($crate::plugin::not_found($crate::abi::PluginKind::Encoder, name))
        }

        extern "C" fn __latent_new_device_encoder(
            name: ::abi_stable::std_types::RStr<'_>, config: ::abi_stable::std_types::RStr<'_>, ctx: &$crate::abi::Context,
        ) -> $crate::abi::PResult<$crate::abi::DeviceEncoderBox> {
            $( if name.as_str() == <$e as $crate::plugin::Plugin>::NAME { return $crate::plugin::new_device_encoder::<$e>(config, ctx); } )*
            let _ = (config, ctx);
            ::abi_stable::std_types::RErr($crate::plugin::not_found($crate::abi::PluginKind::Encoder, name))
        }

        /// The device calls, beside the root module (latent_abi::DeviceExport).
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static latent_device_plugins_v1: $crate::abi::DeviceExport = $crate::abi::DeviceExport {
            abi_version: ::abi_stable::std_types::RStr::from_str($crate::abi::ABI_VERSION),
            layout: <$crate::abi::DeviceFns as ::abi_stable::StableAbi>::LAYOUT,
            fns: $crate::abi::DeviceFns { new_encoder: __latent_new_device_encoder },
        };

        extern "C" fn __latent_new_augmentation(
            name: ::abi_stable::std_types::RStr<'_>, config: ::abi_stable::std_types::RStr<'_>, ctx: &$crate::abi::Context,
        ) -> $crate::abi::PResult<$crate::abi::AugmentationBox> {
            $( if name.as_str() == <$a as $crate::plugin::Plugin>::NAME { return $crate::plugin::new_augmentation::<$a>(config, ctx); } )*
            let _ = (config, ctx);
            ::abi_stable::std_types::RErr($crate::plugin::not_found($crate::abi::PluginKind::Augmentation, name))
        }
        }
    };
}
