//! The device the run trains on: the config's `device` key opened once per process.
//!
//! `device = "cpu"` (the default) needs nothing. `device = "cuda:N"` opens the GPU through
//! `latent-cuda` before any data is read, or fails with what is missing (driver, library,
//! device). Encoders are then offered the device ([`crate::plugins::Encoder::bind`]): one that
//! accepts it runs there, and the host copies images in and features out around the
//! objective, which stays on the CPU; one that refuses stays on the CPU, said once in the log.

use anyhow::{bail, Result};
use latent_abi::DeviceKind;
use latent_cuda::Gpu;
use std::sync::{Arc, Mutex};

/// Where encoders run.
#[derive(Clone, Debug)]
pub enum HostDevice {
    /// The CPU.
    Cpu,
    /// An open CUDA device.
    Cuda(Arc<Gpu>),
}

static OPEN: Mutex<Vec<Arc<Gpu>>> = Mutex::new(Vec::new());

/// Opens the device named by the config key `device` (`cpu`, `cuda`, `cuda:N`); a CUDA device
/// is opened once per process and shared.
pub fn open(device: &str) -> Result<HostDevice> {
    let d = latent_cuda::parse_device(device)
        .map_err(|e| anyhow::anyhow!("config key `device`: {e}"))?;
    if d.kind == DeviceKind::Cpu {
        return Ok(HostDevice::Cpu);
    }
    if crate::dist::world().is_distributed() {
        bail!("config key `device` = {device:?}: data-parallel runs (mpirun) train on the cpu only for now; set device = \"cpu\"");
    }
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = open.iter().find(|g| g.device() == d) {
        return Ok(HostDevice::Cuda(g.clone()));
    }
    let gpu = Gpu::open(d.ordinal)
        .map_err(|e| anyhow::anyhow!("config key `device` = {device:?}: {e}"))?;
    tracing::info!("device {}", gpu.describe());
    let gpu = Arc::new(gpu);
    open.push(gpu.clone());
    Ok(HostDevice::Cuda(gpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_gpu_is_a_clear_error() {
        assert!(matches!(open("cpu").unwrap(), HostDevice::Cpu));
        let e = open("gpu0").unwrap_err().to_string();
        assert!(e.contains("config key `device`") && e.contains("cuda:N"), "{e}");
        if !latent_cuda::driver_present() {
            let e = open("cuda:0").unwrap_err().to_string();
            assert!(
                e.contains("config key `device` = \"cuda:0\"") && e.contains("libcuda.so.1"),
                "{e}"
            );
        }
    }
}

/// How far a device's answer is from the CPU's: `‖a − b‖ / max(‖b‖, tiny)` over a tensor.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (x as f64 - y as f64).powi(2);
        n += (y as f64).powi(2);
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    d.sqrt() / n.sqrt().max(1e-30)
}

/// One compared quantity of [`check`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Agreement {
    /// What was compared (`features`, `loss`, `encoder gradients`, `running statistics`).
    pub what: String,
    /// The relative L2 error of the device against the CPU (the worst tensor's, for groups).
    pub rel_err: f64,
    /// The worst tensor, for groups.
    pub worst: String,
    /// The tolerance of this row.
    pub tol: f64,
    /// Within the tolerance.
    pub ok: bool,
}

/// `latent check-device`: the config's encoder built twice with the same weights, on the CPU
/// and on `device`; one training batch of the config's views (all views in one pass) through
/// both; the objective (on the CPU) on each one's features; the CPU objective's d loss /
/// d features back through both encoders. Compared: features, loss, the gradients (the worst
/// tensor), the parameters and batch-norm running statistics (with `verbose`, every tensor
/// alone too); then two optimizer updates from the same gradients (the CPU's, copied
/// to the device where its optimizer runs) and the EMA target after them; then the losses of
/// two training steps and what those changed in the trained parameters, all together.
/// `device = "cpu"` compares the CPU with itself (the answers are then identical: the test of
/// this check); `perturb` multiplies the device side's weights by 1 + perturb·r first, r
/// uniform in [−1, 1): on the CPU, the rounding noise each row must tolerate.
pub fn check(
    reg: &crate::plugins::Registry,
    cfg: &crate::config::Config,
    device: &str,
    batch: usize,
    tol: f64,
    perturb: f64,
    verbose: bool,
) -> Result<Vec<Agreement>> {
    use crate::data::experiment::{build_views, open_data, view_shape};
    use crate::plugins::ParamAccess;
    use crate::train::learner::{concat, split, Learner};
    use anyhow::Context as _;
    use latent_sdk::kit::Tensor;

    anyhow::ensure!(batch >= 2, "--batch must be at least 2, got {batch}");
    let mut on_cpu = cfg.clone();
    on_cpu.device = "cpu".into();
    let mut on_dev = cfg.clone();
    on_dev.device = device.into();
    let dev = open(device)?;
    let splits = open_data(cfg)?;
    let data = splits.train;
    anyhow::ensure!(
        data.len() >= batch,
        "the dataset has {} images, --batch is {batch}",
        data.len()
    );
    let views = build_views(reg, cfg)?;
    anyhow::ensure!(
        cfg.train.global_views == 0 || cfg.train.global_views == views.len(),
        "check-device runs configs whose views share one size (no multi-crop)"
    );
    let shape = view_shape(&views, data.shape, cfg.train.global_views)?;
    let [c, h, w] = data.shape;
    let images: Vec<f32> =
        data.images[..batch * c * h * w].iter().map(|&b| b as f32 / 255.0).collect();
    let images = Tensor::new(vec![batch, c, h, w], images);
    let seeds: Vec<u64> = (0..batch as u64).collect();
    let xs = views
        .iter()
        .enumerate()
        .map(|(v, a)| {
            let s: Vec<u64> = seeds.iter().map(|&s| s * 1_000 + v as u64).collect();
            a.apply(images.clone(), &s)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut a = Learner::build(reg, &on_cpu, shape).context("building the CPU side")?;
    let mut b = Learner::build(reg, &on_dev, shape).context("building the device side")?;
    if let HostDevice::Cuda(g) = &dev {
        anyhow::ensure!(
            b.encoder.on_device(),
            "encoder '{}' did not accept {}: it runs on the cpu only",
            b.encoder.name,
            g.device()
        );
    }
    b.load_state(&a.state_tensors()?, 0).context("copying the CPU side's weights")?;
    if perturb != 0.0 {
        // every value times 1 + perturb·r, r uniform in [−1, 1) from a fixed sequence
        let mut v = b.encoder.read_params()?;
        let mut k = 1u64;
        for x in v.iter_mut().flat_map(|t| t.data.iter_mut()) {
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let r = (k >> 40) as f64 / (1u64 << 23) as f64 - 1.0;
            *x = (*x as f64 * (1.0 + perturb * r)) as f32;
        }
        b.encoder.write_params(v).context("perturbing the device side's weights")?;
    }
    let nv = xs.len();
    let x = concat(&xs)?;
    let fa = a.encoder.forward(x.clone(), true)?;
    let fb = b.encoder.forward(x, true)?;
    let mut out = Vec::new();
    // Each row's tolerance is `tol` times a factor. Factors above 1 are for quantities that
    // are ill-conditioned under rounding: the CPU against itself with weights perturbed at the
    // level of rounding (`--perturb` 1e-7 to 1e-6) stays inside what the factor allows
    // (docs/ARCHITECTURE.md, "Devices").
    let agree = |what: &str, rel_err: f64, worst: String, factor: f64| Agreement {
        what: what.into(),
        rel_err,
        worst,
        tol: tol * factor,
        ok: rel_err <= tol * factor,
    };
    out.push(agree("features", rel_l2(&fb.data, &fa.data), String::new(), 1.0));
    let labels: Vec<i64> = if a.objective.manifest.needs_labels {
        anyhow::ensure!(data.is_labeled(), "objective needs labels and the dataset has none");
        data.labels[..batch].to_vec()
    } else {
        Vec::new()
    };
    let (ha, hb) = (split(&fa, nv), split(&fb, nv));
    let targets = |h: &[Tensor], on: bool| if on { h.to_vec() } else { Vec::new() };
    let needs_t = a.objective.manifest.needs_target;
    let ra = a.objective.compute(&ha, &targets(&ha, needs_t), &labels, 0, 1, true)?;
    let rb = b.objective.compute(&hb, &targets(&hb, needs_t), &labels, 0, 1, true)?;
    out.push(agree(
        "loss",
        rel_l2(&[rb.loss], &[ra.loss]),
        format!("{} vs {}", rb.loss, ra.loss),
        1.0,
    ));
    let g = concat(&ra.grads)?;
    a.encoder.backward(g.clone())?;
    b.encoder.backward(g)?;
    let (ga, gb) = (a.encoder.take_grads()?, b.encoder.take_grads()?);
    let worst = |names: &[String], xa: &[Tensor], xb: &[Tensor]| {
        let mut w = (0.0f64, String::new());
        for ((n, ta), tb) in names.iter().zip(xa).zip(xb) {
            let e = rel_l2(&tb.data, &ta.data);
            if e > w.0 || (e.is_nan() && !w.0.is_nan()) {
                w = (e, n.clone());
            }
        }
        w
    };
    let all = |xa: &[Tensor], xb: &[Tensor]| {
        let flat = |x: &[Tensor]| x.iter().flat_map(|t| t.data.iter().copied()).collect::<Vec<_>>();
        rel_l2(&flat(xb), &flat(xa))
    };
    let names: Vec<String> = a.enc_params.iter().map(|d| d.name.to_string()).collect();
    // rounding flips the ReLU masks of activations near zero, and a batch-norm bias's
    // gradient is a sum that cancels: on the CPU with weights perturbed by 3e-7, the worst
    // tensor moves by 9e-4 (by 1e-6 at 1e-7, where no mask flips)
    let (e, n) = worst(&names, &ga, &gb);
    out.push(agree("encoder gradients (the worst tensor)", e, n, 10.0));
    let (pa, pb) = (a.encoder.read_params()?, b.encoder.read_params()?);
    let (e, n) = worst(&names, &pa, &pb);
    out.push(agree("parameters and running statistics", e, n, 1.0));
    if verbose {
        // every tensor, in the encoder's order: the first that disagrees points at the layer
        for (i, name) in names.iter().enumerate() {
            if !ga[i].data.is_empty() {
                out.push(agree("  gradient", rel_l2(&gb[i].data, &ga[i].data), name.clone(), 10.0));
            }
            out.push(agree("  value", rel_l2(&pb[i].data, &pa[i].data), name.clone(), 1.0));
        }
    }
    let trained: Vec<usize> = (0..names.len())
        .filter(|&i| {
            matches!(
                a.enc_params[i].role,
                latent_abi::ParamRole::Weight | latent_abi::ParamRole::NoDecay
            )
        })
        .collect();
    let pick = |v: &[Tensor]| trained.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
    let tnames: Vec<String> = trained.iter().map(|&i| names[i].clone()).collect();
    let change = |after: &[Tensor], before: &[Tensor]| -> Vec<Tensor> {
        after
            .iter()
            .zip(before)
            .map(|(x, y)| {
                let d = x.data.iter().zip(&y.data).map(|(x, y)| x - y).collect::<Vec<_>>();
                Tensor::new(x.shape.clone(), d)
            })
            .collect()
    };
    let opt =
        if b.on_device.is_some() { "optimizer on the device" } else { "optimizer on the host" };
    let lr = cfg.optim.lr;
    // the optimizer on the same numbers: the CPU's gradients, twice (SGD's first step and a
    // step with momentum, Adam's bias corrections at t = 1 and 2), and the target's EMA
    let tau = if ra.target_momentum > 0.0 { ra.target_momentum } else { 0.99 };
    for s in 1..=2u64 {
        a.step_with_grads(ga.clone(), s, 10, lr, tau)?;
        b.step_with_grads(ga.clone(), s, 10, lr, tau)?;
    }
    let (sa, sb) = (a.encoder.read_params()?, b.encoder.read_params()?);
    let (e, n) = worst(&tnames, &pick(&change(&sa, &pa)), &pick(&change(&sb, &pb)));
    out.push(agree(&format!("two updates from the same gradients ({opt})"), e, n, 1.0));
    if let (Some(ta), Some(tb)) = (a.target.as_mut(), b.target.as_mut()) {
        let (ta, tb) = (ta.read_params()?, tb.read_params()?);
        let (e, n) = worst(&tnames, &pick(&ta), &pick(&tb));
        out.push(agree("target encoder (EMA) after them", e, n, 1.0));
    }
    // two whole training steps each: the device's backward feeding its optimizer
    let mut losses = (Vec::new(), Vec::new());
    for s in 1..=2u64 {
        losses.0.push(a.step(&xs, &labels, s, 10, lr)?.loss);
        losses.1.push(b.step(&xs, &labels, s, 10, lr)?.loss);
    }
    out.push(agree(
        "losses of two training steps",
        rel_l2(&losses.1, &losses.0),
        format!("{:?} vs {:?}", losses.1, losses.0),
        1.0,
    ));
    // what the steps changed, all parameters together, judged loosely: each side's objective
    // gradient comes from its own features here, and the masks that rounding flips feed two
    // steps, so on the CPU with weights perturbed by 1e-6 this moves by 3e-3, and a tensor
    // whose exact gradient is zero (a bias before a batch norm) by 100 %: the worst tensor is
    // named, not judged. An update missing, doubled or from other gradients moves it by ~1.
    let (qa, qb) = (a.encoder.read_params()?, b.encoder.read_params()?);
    let (da, db) = (pick(&change(&qa, &sa)), pick(&change(&qb, &sb)));
    let (_, n) = worst(&tnames, &da, &db);
    out.push(agree(
        &format!("what the training steps changed ({opt})"),
        all(&da, &db),
        format!("all together; worst tensor {n}"),
        100.0,
    ));
    if let HostDevice::Cuda(_) = dev {
        tracing::info!("device copies took {:.3} s", b.encoder.copy_seconds());
    }
    Ok(out)
}

#[cfg(test)]
mod check_tests {
    use super::rel_l2;

    #[test]
    fn relative_error_is_the_norm_of_the_difference_over_the_reference() {
        assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        let e = rel_l2(&[3.0, 4.0], &[0.0, 5.0]);
        assert!((e - 10f64.sqrt() / 5.0).abs() < 1e-12, "{e}"); // ‖(3, −1)‖ / ‖(0, 5)‖
        assert!(rel_l2(&[1.0], &[1.0, 2.0]).is_infinite(), "lengths differ");
        assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan(), "a NaN is not agreement");
        assert!(rel_l2(&[1e-3], &[0.0]) > 1e20, "a zero reference is not a free pass");
    }
}
