//! Shared pieces of the `latent` side of the benchmarks (`bench/run`): the benchmark config of
//! ../shared/bench-spec.md, the plugin directory, deterministic inputs, medians and the
//! process's peak resident memory.

use anyhow::{Context as _, Result};
use latent_host::config::{Config, PluginConfig};
use latent_host::plugins::Registry;
use latent_sdk::kit::Tensor;
use std::path::PathBuf;

/// The directory holding the plugin libraries: `--plugin-dir DIR` if given, else the directory
/// of this binary (cargo puts `liblatent_plugin_*.so` beside it in `target/release`).
pub fn plugin_dir(args: &[String]) -> Result<PathBuf> {
    if let Some(i) = args.iter().position(|a| a == "--plugin-dir") {
        return Ok(PathBuf::from(args.get(i + 1).context("--plugin-dir needs a directory")?));
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe.parent().context("binary without a directory")?.to_path_buf())
}

/// Loads the plugins from exactly `dir` and checks the three the benchmark needs are there.
pub fn registry(dir: PathBuf) -> Result<Registry> {
    let reg = Registry::discover_in(vec![dir.clone()])?;
    for name in ["resnet", "simclr", "pipeline"] {
        anyhow::ensure!(
            reg.entries.contains_key(name),
            "plugin '{name}' not found in {} (build them first: cargo build --release); failures: {:?}",
            dir.display(),
            reg.failures
        );
    }
    Ok(reg)
}

/// The value of `--name N` among `args`, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}"))
        }
    }
}

/// The benchmark spec's SimCLR step: resnet-mini, head Linear(128→256) BN ReLU Linear(256→128),
/// NT-Xent τ 0.5, SGD lr 0.06 momentum 0.9 weight decay 5e-4 (constant lr).
pub fn spec_config() -> Config {
    use latent_host::train::optim::{LrSchedule, OptimConfig, OptimizerKind};
    Config {
        encoder: PluginConfig {
            plugin: "resnet".into(),
            config: serde_json::json!({"preset": "resnet-mini"}),
        },
        objective: PluginConfig {
            plugin: "simclr".into(),
            config: serde_json::json!({"hidden_dim": 256, "output_dim": 128, "temperature": 0.5}),
        },
        optim: OptimConfig {
            name: OptimizerKind::Sgd,
            lr: 0.06,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Constant,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A workload of pair 1: the encoder config, the image shape and the default batch.
///
/// - `resnet-mini`: ../shared/bench-spec.md (1x28x28, batch 256, head 128→256→128).
/// - `resnet18-cifar`: the CIFAR ResNet-18 that solo-learn and lightly benchmark with, on
///   3x32x32 at batch 128, head 512→512→128 (lightly's SimCLR example); the rest as the spec.
///
/// `per_view` sets `train.batch_norm = "per_view"` (statistics per view, one batch).
pub fn workload(name: &str, per_view: bool) -> Result<(Config, [usize; 3], usize)> {
    use latent_host::config::BatchNormScope;
    let mut cfg = spec_config();
    let (shape, batch) = match name {
        "resnet-mini" => ([1, 28, 28], 256),
        "resnet18-cifar" => {
            cfg.encoder.config = serde_json::json!({"preset": "resnet18-cifar"});
            cfg.objective.config =
                serde_json::json!({"hidden_dim": 512, "output_dim": 128, "temperature": 0.5});
            ([3, 32, 32], 128)
        }
        other => anyhow::bail!("--workload must be resnet-mini or resnet18-cifar, got {other:?}"),
    };
    if per_view {
        cfg.train.batch_norm = BatchNormScope::PerView;
    }
    Ok((cfg, shape, batch))
}

/// Deterministic pseudo-random values in [0, 1) (xorshift64).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Two fixed "pre-augmented" views of `batch` images of `shape`.
pub fn fixed_views(batch: usize, shape: [usize; 3]) -> Vec<Tensor> {
    let n = batch * shape.iter().product::<usize>();
    (0..2u64)
        .map(|v| Tensor::new(vec![batch, shape[0], shape[1], shape[2]], uniform(n, 1 + v)))
        .collect()
}

/// Median of `xs` (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (`VmHWM` of /proc/self/status).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds this process has used so far, all threads (utime + stime of /proc/self/stat, in
/// clock ticks of 1/100 s): a rate per CPU-second is robust to other load on a shared machine.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // fields after the parenthesised command name; utime and stime are fields 14 and 15
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Writes `value` as one JSON document to `--json FILE` when given, and prints it.
pub fn emit(args: &[String], value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    if let Some(i) = args.iter().position(|a| a == "--json") {
        let path = PathBuf::from(args.get(i + 1).context("--json needs a file")?);
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}
