//! Checks of a plugin through its ABI object, as the host sees it: gradients against finite
//! differences, determinism, and finite losses on degenerate input. `latent check-plugin FILE
//! --deep` runs them on every objective and encoder of a library; plugin tests call them too.
//!
//! Gradients: d loss / d views (objectives) and d loss / d each trained parameter, against
//! central differences of the loss with every parameter and buffer restored before each
//! evaluation (so batch-norm statistics and objective state do not drift). An encoder's loss is
//! `Σ features ⊙ r` for a fixed random `r`. The error of a tensor is the largest
//! |analytic − numeric| over its checked entries, divided by the tensor's largest gradient
//! (all entries, analytic or numeric; at least `floor`): f32 forward passes make finite differences noisy below that.

use crate::abi::{EncoderBox, ObjectiveBox, ObjectiveInput, ParamRole};
use crate::kit::gradcheck::random;
use crate::kit::Tensor;
use abi_stable::std_types::RVec;
use anyhow::{anyhow, bail, ensure, Result};

/// The worst error of one checked tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorError {
    /// `view k` or the parameter's name.
    pub name: String,
    /// Relative error (see the module docs).
    pub error: f64,
    /// Entries compared.
    pub entries: usize,
}

/// How a gradient check is run.
#[derive(Debug, Clone, Copy)]
pub struct FdOptions {
    /// Finite-difference step.
    pub h: f32,
    /// At most this many entries per tensor (evenly spread); `usize::MAX` for all.
    pub max_entries: usize,
    /// Magnitudes below this count as this (f32 noise).
    pub floor: f64,
}

impl Default for FdOptions {
    fn default() -> Self {
        FdOptions { h: 1e-3, max_entries: usize::MAX, floor: 1e-2 }
    }
}

fn pe(e: crate::abi::PluginError) -> anyhow::Error {
    anyhow!("{e}")
}

fn descs(ts: &[Tensor]) -> RVec<crate::abi::TensorDesc> {
    ts.iter().cloned().map(Tensor::into_desc).collect()
}

fn tensors(ds: RVec<crate::abi::TensorDesc>) -> Result<Vec<Tensor>> {
    ds.into_iter().map(Tensor::from_desc).collect()
}

fn entries(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..max).map(|k| k * n / max + (k * 7919) % (n / max).max(1)).collect();
    v.dedup();
    v
}

/// `full` is the whole analytic gradient: the scale is the tensor's largest gradient, not only
/// that of the sampled entries.
fn rel_err(full: &[f32], ana: &[f64], num: &[f64], floor: f64) -> f64 {
    let scale = full
        .iter()
        .map(|&v| v as f64)
        .chain(num.iter().copied())
        .fold(floor, |m, v| m.max(v.abs()));
    ana.iter().zip(num).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale
}

/// One objective step's inputs.
#[derive(Clone)]
pub struct ObjectiveCase {
    /// Online embeddings per view.
    pub views: Vec<Tensor>,
    /// Target embeddings per view (empty unless needed).
    pub targets: Vec<Tensor>,
    /// Labels (empty unless needed).
    pub labels: Vec<i64>,
}

impl ObjectiveCase {
    fn input(&self, views: &[Tensor], train: bool) -> ObjectiveInput {
        ObjectiveInput {
            views: descs(views),
            targets: descs(&self.targets),
            labels: self.labels.clone().into(),
            step: 3,
            total_steps: 10,
            train,
        }
    }
}

/// Gradient errors of an objective: each view, then each trained parameter.
pub fn objective_gradients(
    obj: &mut ObjectiveBox,
    case: &ObjectiveCase,
    o: FdOptions,
) -> Result<Vec<TensorError>> {
    let params = obj.params().into_result().map_err(pe)?;
    let start = tensors(obj.read_params().into_result().map_err(pe)?)?;
    obj.take_grads().into_result().map_err(pe)?;
    let out = obj.compute(case.input(&case.views, true)).into_result().map_err(pe)?;
    let pgrads = tensors(obj.take_grads().into_result().map_err(pe)?)?;
    let vgrads = tensors(out.grads)?;
    ensure!(
        vgrads.len() == case.views.len(),
        "compute returned {} view gradients for {} views",
        vgrads.len(),
        case.views.len()
    );
    let mut loss_at = |views: &[Tensor], ps: &[Tensor]| -> Result<f64> {
        obj.write_params(descs(ps)).into_result().map_err(pe)?;
        Ok(obj.compute(case.input(views, true)).into_result().map_err(pe)?.loss as f64)
    };
    let mut out = Vec::new();
    let mut views = case.views.clone();
    for (v, g) in vgrads.iter().enumerate() {
        ensure!(
            g.shape == case.views[v].shape,
            "the gradient of view {v} has shape {:?}, the view {:?}",
            g.shape,
            case.views[v].shape
        );
        out.push(tensor_error(format!("view {v}"), &mut views, v, &g.data, o, &mut |vs| {
            loss_at(vs, &start)
        })?);
    }
    out.extend(param_errors(&params, &start, &pgrads, o, |ps| loss_at(&case.views, ps))?);
    obj.write_params(descs(&start)).into_result().map_err(pe)?;
    Ok(out)
}

fn param_errors(
    params: &[crate::abi::ParamDesc],
    start: &[Tensor],
    grads: &[Tensor],
    o: FdOptions,
    mut loss_at: impl FnMut(&[Tensor]) -> Result<f64>,
) -> Result<Vec<TensorError>> {
    ensure!(
        grads.len() == params.len(),
        "take_grads returned {} tensors for {} parameters",
        grads.len(),
        params.len()
    );
    let mut at = start.to_vec();
    let mut out = Vec::new();
    for (pi, d) in params.iter().enumerate() {
        if !matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
            if !grads[pi].is_empty() && grads[pi].data.iter().any(|&g| g != 0.0) {
                bail!("{} is not trained (role {:?}) but has a gradient", d.name, d.role);
            }
            continue;
        }
        if grads[pi].is_empty() && !start[pi].is_empty() {
            continue; // frozen for now (`Param::frozen`): no update, so nothing to check
        }
        ensure!(
            grads[pi].len() == start[pi].len(),
            "the gradient of {} has {} values, the parameter {}",
            d.name,
            grads[pi].len(),
            start[pi].len()
        );
        out.push(tensor_error(d.name.to_string(), &mut at, pi, &grads[pi].data, o, &mut loss_at)?);
    }
    Ok(out)
}

/// The error of `grad`, the analytic gradient of tensor `k` of `at`, against central
/// differences of `loss_at(at)` over the sampled entries; `at` is moved and put back in place.
fn tensor_error(
    name: String,
    at: &mut [Tensor],
    k: usize,
    grad: &[f32],
    o: FdOptions,
    loss_at: &mut impl FnMut(&[Tensor]) -> Result<f64>,
) -> Result<TensorError> {
    let idx = entries(at[k].len(), o.max_entries);
    let mut num = Vec::with_capacity(idx.len());
    for &j in &idx {
        let x = at[k].data[j];
        at[k].data[j] = x + o.h;
        let lp = loss_at(at);
        at[k].data[j] = x - o.h;
        let lm = loss_at(at);
        at[k].data[j] = x;
        num.push((lp? - lm?) / (2.0 * o.h as f64));
    }
    let ana: Vec<f64> = idx.iter().map(|&j| grad[j] as f64).collect();
    Ok(TensorError { name, error: rel_err(grad, &ana, &num, o.floor), entries: idx.len() })
}

/// Gradient errors of an encoder's trained parameters for `images` `[N, C, H, W]`, with the
/// loss `Σ features ⊙ r`.
pub fn encoder_gradients(
    enc: &mut EncoderBox,
    images: &Tensor,
    o: FdOptions,
) -> Result<Vec<TensorError>> {
    let params = enc.params().into_result().map_err(pe)?;
    let start = tensors(enc.read_params().into_result().map_err(pe)?)?;
    enc.take_grads().into_result().map_err(pe)?;
    let y = Tensor::from_desc(
        enc.forward(images.clone().into_desc(), true).into_result().map_err(pe)?,
    )?;
    let r = random(&y.shape, 77);
    enc.backward(r.clone().into_desc()).into_result().map_err(pe)?;
    let grads = tensors(enc.take_grads().into_result().map_err(pe)?)?;
    let out = param_errors(&params, &start, &grads, o, |ps| {
        enc.write_params(descs(ps)).into_result().map_err(pe)?;
        let y = Tensor::from_desc(
            enc.forward(images.clone().into_desc(), true).into_result().map_err(pe)?,
        )?;
        Ok(y.data.iter().zip(&r.data).map(|(a, b)| *a as f64 * *b as f64).sum())
    })?;
    enc.write_params(descs(&start)).into_result().map_err(pe)?;
    Ok(out)
}

/// Loss and every gradient of one training step, as bits, for comparing two instances.
pub fn objective_bits(obj: &mut ObjectiveBox, case: &ObjectiveCase) -> Result<Vec<u32>> {
    let out = obj.compute(case.input(&case.views, true)).into_result().map_err(pe)?;
    let mut bits = vec![out.loss.to_bits()];
    for g in
        tensors(out.grads)?.iter().chain(&tensors(obj.take_grads().into_result().map_err(pe)?)?)
    {
        bits.extend(g.data.iter().map(|v| v.to_bits()));
    }
    Ok(bits)
}

/// Features and parameter gradients of one training step, as bits.
pub fn encoder_bits(enc: &mut EncoderBox, images: &Tensor) -> Result<Vec<u32>> {
    let y = Tensor::from_desc(
        enc.forward(images.clone().into_desc(), true).into_result().map_err(pe)?,
    )?;
    enc.backward(random(&y.shape, 77).into_desc()).into_result().map_err(pe)?;
    let mut bits: Vec<u32> = y.data.iter().map(|v| v.to_bits()).collect();
    for g in tensors(enc.take_grads().into_result().map_err(pe)?)? {
        bits.extend(g.data.iter().map(|v| v.to_bits()));
    }
    Ok(bits)
}

/// The loss and gradients of one training step are finite; an error says which is not.
pub fn objective_finite(obj: &mut ObjectiveBox, case: &ObjectiveCase) -> Result<()> {
    let out = obj.compute(case.input(&case.views, true)).into_result().map_err(pe)?;
    ensure!(out.loss.is_finite(), "the loss is {}", out.loss);
    for (v, g) in tensors(out.grads)?.iter().enumerate() {
        ensure!(g.data.iter().all(|x| x.is_finite()), "the gradient of view {v} is not finite");
    }
    let names = obj.params().into_result().map_err(pe)?;
    for (d, g) in names.iter().zip(tensors(obj.take_grads().into_result().map_err(pe)?)?) {
        ensure!(g.data.iter().all(|x| x.is_finite()), "the gradient of {} is not finite", d.name);
    }
    Ok(())
}

/// For tests: panics naming every tensor whose gradient error is `tol` or more (all entries,
/// step `h`, floor 1e-2).
pub fn assert_objective_gradients(
    obj: &mut ObjectiveBox,
    views: Vec<Tensor>,
    targets: Vec<Tensor>,
    labels: Vec<i64>,
    h: f32,
    tol: f64,
) {
    let case = ObjectiveCase { views, targets, labels };
    let errs = objective_gradients(obj, &case, FdOptions { h, ..FdOptions::default() })
        .expect("gradient check ran");
    let bad: Vec<_> = errs.iter().filter(|e| e.error.is_nan() || e.error >= tol).collect();
    assert!(bad.is_empty(), "gradients off (tolerance {tol:.1e}): {bad:?}");
    assert!(!errs.is_empty());
}

/// Features and gradients of one training step are finite; an error says which is not.
pub fn encoder_finite(enc: &mut EncoderBox, images: &Tensor) -> Result<()> {
    let y = Tensor::from_desc(
        enc.forward(images.clone().into_desc(), true).into_result().map_err(pe)?,
    )?;
    ensure!(y.data.iter().all(|x| x.is_finite()), "the features are not finite");
    enc.backward(random(&y.shape, 77).into_desc()).into_result().map_err(pe)?;
    let names = enc.params().into_result().map_err(pe)?;
    for (d, g) in names.iter().zip(tensors(enc.take_grads().into_result().map_err(pe)?)?) {
        ensure!(g.data.iter().all(|x| x.is_finite()), "the gradient of {} is not finite", d.name);
    }
    Ok(())
}
