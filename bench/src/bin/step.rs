//! One SimCLR training step of the benchmark spec (../shared/bench-spec.md), timed.
//!
//! ```text
//! step --mode plugin [--steps 5] [--batch 256] [--json FILE] [--plugin-dir DIR]
//!     pairs 1 and 4: the real host `Learner` over plugins loaded from the built libraries;
//!     one warm-up step, then the median of --steps; views/s = 2·batch / median; peak RSS
//! step --mode serve [--workload resnet-mini|resnet18-cifar] [--batch B] [--bn all_views|per_view]
//!            [--device cpu|cuda:N]
//!     pair 1 (bench/pair.py drives it): builds the Learner, prints one JSON line {"ready": ...},
//!     then answers each line `step` on stdin with one training step and one JSON line
//!     {"t": wall s, "cpu": CPU s, "loss": ...}, and `quit` with {"peak_rss_mib": ...}
//! step --mode gemm
//!     the FLOP rate of latent's own matrix product as the convolutions run it: one
//!     single-threaded product per rayon thread at once (the AVX-512 or AVX2 kernel where
//!     the CPU has it), best of 3, at 1024x1024x1024 and at two shapes whose operands fit the caches
//!     (128 and 256 rows, k = 256, 1024 columns); prints the best as {"gemm_gflops": ...}
//! step --mode abi [--steps 5] ...
//!     pair 3: three learners with identical weights, stepped in turn (A B C, then C B A, ...)
//!     so that machine noise hits all three alike:
//!       A  plugin     Learner::step, encoder and objective loaded from the cdylibs
//!       B  handles    Learner::step, the same ABI objects built in-process
//!                     (latent_sdk::plugin::new_encoder::<ResNet>, ...) - no dynamic loading
//!       C  direct     the same step written against the author-side structs through their
//!                     EncoderPlugin / ObjectivePlugin traits: no ABI objects, no descriptor
//!                     conversions, no host-side checks, parameters updated in place by the
//!                     host's own Optimizer (no read/write/take of parameter copies)
//!     ABI overhead = (A − C) / A per round, median over rounds; A − B isolates dynamic loading.
//! ```
//! Inputs are fixed tensors (2 views of `batch` random 1x28x28 images), the learning rate is
//! constant 0.06, so every step does the same work.

use anyhow::{ensure, Result};
use latent_abi::{Context, ParamDesc, ParamRole, PluginKind};
use latent_bench::*;
use latent_host::plugins::{Encoder, Objective, ParamAccess};
use latent_host::train::learner::{concat, split, Learner};
use latent_host::train::optim::Optimizer;
use latent_plugin_resnet::ResNet;
use latent_plugin_simclr::SimClr;
use latent_sdk::kit::{Module, Tensor};
use latent_sdk::plugin::{EncoderPlugin, ObjectiveBatch, ObjectivePlugin, Plugin};
use serde_json::json;
use std::time::Instant;

const SHAPE: [usize; 3] = [1, 28, 28];

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

/// Wall and CPU seconds (all threads of the process) of `f`.
fn time_cpu<T>(cpu: &mut Vec<f64>, f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let c = cpu_seconds();
    let r = time(f)?;
    cpu.push(cpu_seconds() - c);
    Ok(r)
}

/// B: the Learner over ABI objects built in-process from the linked plugin crates.
fn in_process_learner(cfg: &latent_host::config::Config) -> Result<Learner> {
    let enc_json = json!({"preset": "resnet-mini", "in_channels": SHAPE[0]}).to_string();
    let obj_json =
        json!({"input_dim": 128, "hidden_dim": 256, "output_dim": 128, "temperature": 0.5})
            .to_string();
    // the seeds Learner::build uses: train.seed for the encoder, train.seed + 1 for the objective
    let ctx_e = Context { seed: cfg.train.seed, ..Default::default() };
    let ctx_o = Context { seed: cfg.train.seed.wrapping_add(1), ..Default::default() };
    let enc_box = latent_sdk::plugin::new_encoder::<ResNet>(enc_json.as_str().into(), &ctx_e)
        .into_result()?;
    let obj_box = latent_sdk::plugin::new_objective::<SimClr>(obj_json.as_str().into(), &ctx_o)
        .into_result()?;
    let mut encoder = Encoder::new("resnet", enc_box);
    let feat_dim = encoder.out_dim(SHAPE)?;
    let manifest = latent_sdk::plugin::manifest::<SimClr>(
        PluginKind::Objective,
        env!("CARGO_PKG_VERSION"),
        false,
        false,
    );
    let mut objective = Objective::new(manifest, obj_box);
    let enc_params = encoder.params()?;
    let obj_params = objective.params()?;
    Ok(Learner {
        encoder,
        objective,
        target: None,
        target_is_online: false,
        optim: Optimizer::new(cfg.optim.clone())?,
        enc_params,
        obj_params,
        input_shape: SHAPE,
        feat_dim,
        global_views: 0,
        online_drops_paths: false,
        on_device: None,
        last_objective_s: 0.0,
    })
}

/// The optimizer phase of `Learner::step` for one module, as host/src/train/learner.rs does it: the
/// gradients and values cross the ABI (take_grads, read_params), are updated, and are written
/// back (write_params). SimCLR has no EMA targets, so that part of the host's `update` is left out.
fn update_through_abi(
    optim: &mut Optimizer,
    m: &mut dyn ParamAccess,
    descs: &[ParamDesc],
    prefix: &str,
    lr: f64,
) -> Result<()> {
    let grads = m.take_grads()?;
    let mut vals = m.read_params()?;
    for ((d, v), g) in descs.iter().zip(vals.iter_mut()).zip(&grads) {
        if matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
            optim.update(&format!("{prefix}.{}", d.name), d.role, &mut v.data, &g.data, lr);
        }
    }
    m.write_params(vals)
}

/// C: the author-side structs, called through their traits, updated in place.
struct Direct {
    enc: ResNet,
    obj: SimClr,
    optim: Optimizer,
}

impl Direct {
    fn new(cfg: &latent_host::config::Config) -> Result<Direct> {
        let ctx_e = Context { seed: cfg.train.seed, ..Default::default() };
        let ctx_o = Context { seed: cfg.train.seed.wrapping_add(1), ..Default::default() };
        let mut enc = ResNet::new(
            latent_plugin_resnet::Config {
                preset: "resnet-mini".into(),
                in_channels: SHAPE[0],
                ..Default::default()
            },
            &ctx_e,
        )?;
        enc.out_dim(SHAPE)?;
        let obj = SimClr::new(
            latent_plugin_simclr::Config {
                input_dim: 128,
                hidden_dim: 256,
                output_dim: 128,
                temperature: 0.5,
                ..Default::default()
            },
            &ctx_o,
        )?;
        Ok(Direct { enc, obj, optim: Optimizer::new(cfg.optim.clone())? })
    }

    /// The optimizer phase of [`Direct::step`]: every trainable parameter updated in place.
    fn update_in_place(&mut self, lr: f64) {
        let optim = &mut self.optim;
        let mut upd = |prefix: &str, m: &mut dyn Module| {
            m.visit_params(&mut |p| {
                if p.trainable() {
                    optim.update(
                        &format!("{prefix}.{}", p.name),
                        p.role,
                        &mut p.value,
                        &p.grad,
                        lr,
                    );
                    p.grad.iter_mut().for_each(|g| *g = 0.0);
                }
            })
        };
        upd("encoder", &mut self.enc);
        upd("objective", &mut self.obj);
    }

    fn step(&mut self, views: &[Tensor], step: u64, total: u64, lr: f64) -> Result<f32> {
        let x = concat(views)?;
        let feats = self.enc.forward(x, true)?;
        let hs = split(&feats, views.len());
        let res = self.obj.compute(ObjectiveBatch {
            views: hs,
            targets: vec![],
            labels: vec![],
            step,
            total_steps: total,
            train: true,
        })?;
        self.enc.backward(concat(&res.grads)?)?;
        self.optim.begin_step();
        self.update_in_place(lr);
        Ok(res.loss)
    }
}

/// `--mode serve`: one step per `step` line on stdin, one JSON line per answer on stdout.
fn serve(args: &[String]) -> Result<()> {
    use std::io::BufRead;
    let name: String = arg(args, "--workload", "resnet-mini".to_string())?;
    let bn: String = arg(args, "--bn", "all_views".to_string())?;
    ensure!(
        bn == "all_views" || bn == "per_view",
        "--bn must be all_views or per_view, got {bn:?}"
    );
    let (mut cfg, shape, default_batch) = workload(&name, bn == "per_view")?;
    // the device the encoder runs on (`cuda:0`: tests/gpu/run); the objective stays on the CPU
    cfg.device = arg(args, "--device", "cpu".to_string())?;
    let batch: usize = arg(args, "--batch", default_batch)?;
    let views = fixed_views(batch, shape);
    let reg = registry(plugin_dir(args)?)?;
    let mut l = Learner::build(&reg, &cfg, shape)?;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let params: usize = l
        .enc_params
        .iter()
        .chain(&l.obj_params)
        .map(|d| d.shape.iter().product::<u64>() as usize)
        .sum();
    println!(
        "{}",
        json!({"ready": true, "side": "latent", "workload": name, "batch_norm": bn, "batch": batch, "device": cfg.device,
               "views_per_step": 2 * batch, "input": shape, "rayon_threads": threads, "param_values": params,
               "what": format!("SimCLR step, {name}, batch norm {bn}, plugins loaded from the built libraries (host Learner)")})
    );
    let mut s = 0u64;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "step" => {
                let (c0, copy0) = (cpu_seconds(), l.encoder.copy_seconds());
                let (t, o) = time(|| l.step(&views, &[], s, 1 << 40, cfg.optim.lr))?;
                // on a device: the host's copies and the objective (on the CPU) of this step
                let copy = l.encoder.copy_seconds() - copy0;
                println!(
                    "{}",
                    json!({"t": t, "cpu": cpu_seconds() - c0, "loss": o.loss,
                           "copy_s": copy, "objective_s": l.last_objective_s})
                );
                s += 1;
            }
            "quit" => break,
            other => anyhow::bail!("serve: unknown command {other:?} (step or quit)"),
        }
    }
    println!("{}", json!({"peak_rss_mib": peak_rss_mib()}));
    Ok(())
}

/// `--mode gemm`: latent's matrix-product rate with every rayon thread busy, in GFLOP/s.
fn gemm_rate() -> Result<()> {
    use latent_sdk::kit::{ops, simd_gemm};
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    // the best rate over a large square product and two whose operands fit the caches (the
    // convolutions' products are of that kind: a few hundred rows of k), so that the limit is
    // what the kernel can do, not what one awkward shape gives
    let mut rates = Vec::new();
    for (m, n, k) in [(1024, 1024, 1024), (128, 1024, 256), (256, 1024, 256)] {
        let a = uniform(m * k, 7);
        let b = uniform(k * n, 8);
        let reps = (1usize << 31).div_ceil(2 * m * n * k).max(1);
        let mut cs = vec![vec![0.0f32; m * n]; threads];
        let mut best = f64::INFINITY;
        // one warm-up round, then the best of 3
        for round in 0..4 {
            let (t, _) = time(|| {
                cs.par_iter_mut().for_each(|c| {
                    for _ in 0..reps {
                        if simd_gemm::available() {
                            let view = simd_gemm::StridedA { data: &a, rs: k, cs: 1 };
                            simd_gemm::gemm(m, n, k, view, &b, n, c, n, false);
                        } else {
                            let (am, bm) = (ops::Mat::new(&a, m, k), ops::Mat::new(&b, k, n));
                            ops::matmul(am, bm, c, false);
                        }
                    }
                });
                Ok(())
            })?;
            if round > 0 {
                best = best.min(t);
            }
        }
        rates.push(json!({"m": m, "n": n, "k": k,
            "gflops": (threads * reps * 2 * m * n * k) as f64 / best / 1e9}));
    }
    let gflops = rates.iter().filter_map(|r| r["gflops"].as_f64()).fold(0.0, f64::max);
    println!(
        "{}",
        json!({"gemm_gflops": gflops, "shapes": rates, "threads": threads, "avx512": simd_gemm::avx512()})
    );
    Ok(())
}

fn main() -> Result<()> {
    latent_host::memory::reexec_with_huge_pages();
    latent_host::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let mode: String = arg(&args, "--mode", "plugin".to_string())?;
    let steps: usize = arg(&args, "--steps", 5)?;
    let batch: usize = arg(&args, "--batch", 256)?;
    ensure!(steps >= 1, "--steps must be at least 1");
    let cfg = spec_config();
    let views = fixed_views(batch, SHAPE);
    let lr = cfg.optim.lr;
    let total = (steps + 1) as u64;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());

    match mode.as_str() {
        "serve" => serve(&args),
        "gemm" => gemm_rate(),
        "plugin" => {
            let reg = registry(plugin_dir(&args)?)?;
            let mut l = Learner::build(&reg, &cfg, SHAPE)?;
            let (warm, first) = time(|| l.step(&views, &[], 0, total, lr))?;
            let mut times = Vec::new();
            let mut losses = vec![first.loss];
            let cpu0 = cpu_seconds();
            for s in 0..steps {
                let (t, o) = time(|| l.step(&views, &[], s as u64 + 1, total, lr))?;
                times.push(t);
                losses.push(o.loss);
            }
            let cpu_per_step = (cpu_seconds() - cpu0) / steps as f64;
            let med = median(&times);
            emit(
                &args,
                &json!({
                    "side": "latent", "what": "SimCLR training step, plugins loaded from the built libraries (host Learner)",
                    "batch": batch, "views_per_step": 2 * batch, "input": SHAPE, "rayon_threads": threads,
                    "warmup_s": warm, "step_s": times, "median_step_s": med, "views_per_s": (2 * batch) as f64 / med,
                    "losses": losses, "cpu_s_per_step": cpu_per_step, "peak_rss_mib": peak_rss_mib(),
                }),
            )
        }
        "abi" => {
            let reg = registry(plugin_dir(&args)?)?;
            let mut a = Learner::build(&reg, &cfg, SHAPE)?;
            let mut b = in_process_learner(&cfg)?;
            let mut c = Direct::new(&cfg)?;
            // warm-up, and a check that the three do the same work: same initial weights, same loss
            let la = a.step(&views, &[], 0, total, lr)?.loss;
            let lb = b.step(&views, &[], 0, total, lr)?.loss;
            let lc = c.step(&views, 0, total, lr)?;
            ensure!(
                la == lb && (la - lc).abs() <= 1e-5 * la.abs().max(1.0),
                "the three variants disagree on the first loss: {la} {lb} {lc}"
            );
            let (mut ta, mut tb, mut tc) = (Vec::new(), Vec::new(), Vec::new());
            let (mut ca, mut cb, mut cc) = (Vec::new(), Vec::new(), Vec::new());
            let mut last = (0.0f32, 0.0f32, 0.0f32);
            for s in 0..steps {
                let s1 = s as u64 + 1;
                // A B C in even rounds, C B A in odd ones: no variant always follows the same one
                let order: [u8; 3] = if s % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
                for v in order {
                    match v {
                        0 => {
                            let (t, o) = time_cpu(&mut ca, || a.step(&views, &[], s1, total, lr))?;
                            ta.push(t);
                            last.0 = o.loss;
                        }
                        1 => {
                            let (t, o) = time_cpu(&mut cb, || b.step(&views, &[], s1, total, lr))?;
                            tb.push(t);
                            last.1 = o.loss;
                        }
                        _ => {
                            let (t, o) = time_cpu(&mut cc, || c.step(&views, s1, total, lr))?;
                            tc.push(t);
                            last.2 = o;
                        }
                    }
                }
            }
            // Same code on both sides gives bitwise the same losses step after step; a
            // difference means the loaded libraries are not the build the binary links.
            let same_build = last.0 == last.1;
            if !same_build {
                eprintln!(
                    "warning: after {} steps the loaded plugins give loss {} and the linked ones {}: the libraries in the plugin \
                     directory are not from this binary's build (build both in one cargo invocation, as bench/run does)",
                    steps + 1, last.0, last.1
                );
            }
            // The largest boundary-only cost of a step, measured alone (small, so many repetitions
            // give a figure far below the step's noise): the parameter round trip through the ABI
            // (A's optimizer phase) against C's in-place update; the optimizer maths is the same.
            let reps = 20;
            let (mut sync_a, mut sync_c) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let (t, _) = time(|| {
                    update_through_abi(&mut a.optim, &mut a.encoder, &a.enc_params, "encoder", lr)?;
                    update_through_abi(
                        &mut a.optim,
                        &mut a.objective,
                        &a.obj_params,
                        "objective",
                        lr,
                    )
                })?;
                sync_a.push(t);
                let (t, _) = time(|| {
                    c.update_in_place(lr);
                    Ok(())
                })?;
                sync_c.push(t);
            }
            let (msa, msc) = (median(&sync_a), median(&sync_c));
            let paired = |x: &[f64], y: &[f64]| {
                median(&x.iter().zip(y).map(|(x, y)| (x - y) / x * 100.0).collect::<Vec<_>>())
            };
            let (ma, mb, mc) = (median(&ta), median(&tb), median(&tc));
            emit(
                &args,
                &json!({
                    "what": "ABI overhead: the same SimCLR step through loaded plugins (A), in-process ABI handles (B), direct trait calls (C), interleaved",
                    "batch": batch, "rounds": steps, "rayon_threads": threads,
                    "first_loss": [la, lb, lc], "last_loss": [last.0, last.1, last.2], "same_build": same_build,
                    "plugin_step_s": ta, "handles_step_s": tb, "direct_step_s": tc,
                    "median_plugin_s": ma, "median_handles_s": mb, "median_direct_s": mc,
                    "abi_overhead_pct": paired(&ta, &tc),
                    "abi_overhead_ms": (ma - mc) * 1e3,
                    "dynamic_loading_pct": paired(&ta, &tb),
                    "boundary_protocol_pct": paired(&tb, &tc),
                    "param_sync_through_abi_ms": msa * 1e3, "param_update_in_place_ms": msc * 1e3,
                    "param_sync_overhead_pct_of_step": (msa - msc) / median(&ta) * 100.0,
                    "plugin_cpu_s": ca, "handles_cpu_s": cb, "direct_cpu_s": cc,
                    "abi_overhead_cpu_pct": paired(&ca, &cc),
                    "dynamic_loading_cpu_pct": paired(&ca, &cb),
                    "boundary_protocol_cpu_pct": paired(&cb, &cc),
                }),
            )
        }
        other => anyhow::bail!("--mode must be serve, gemm, plugin or abi, got {other:?}"),
    }
}
