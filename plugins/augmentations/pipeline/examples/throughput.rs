//! Views per second of the `pipeline` augmentation on one thread, 32×32 RGB.
//!
//! ```text
//! cargo run --release -p latent-plugin-pipeline --example throughput [-- SECONDS]
//! ```
//! Measures three configs: the simclr preset at its defaults; the lightly-matched config
//! (strength 0.5, no blur, ImageNet normalization, as `bench/lightly_augment.py` runs lightly's
//! `SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`); and the byol view 0
//! preset (blur always on). Each is timed through the plugin's `apply` (the per-image call the
//! SDK wrapper makes) on a fixed set of 256 random images, one view per call; then the simclr
//! preset through the ABI object (`AugmentationAbi::apply`, a batch of 256 per call), as the
//! host's loader calls it.
//!
//! Rates are per wall-clock second and per CPU second of this (single-threaded) process (from
//! `/proc/self/stat`, Linux), the latter robust to other load on a shared machine.

use latent_plugin_pipeline::{Config, Pipeline};
use latent_sdk::abi::Context;
use latent_sdk::plugin::{AugmentationPlugin, Plugin};
use std::time::Instant;

/// CPU seconds (user + system) used by this process so far; 0 where /proc is unavailable.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the ")" closing the command name: state is field 3; utime, stime are 14, 15
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    if f.len() < 13 {
        return 0.0;
    }
    (f[11] + f[12]) / 100.0 // USER_HZ is 100 on Linux
}

fn report(name: &str, views: u64, wall: f64, cpu: f64) {
    let rate = views as f64 / wall;
    let per_cpu = if cpu > 0.0 { format!("{:.0}", views as f64 / cpu) } else { "n/a".into() };
    println!(
        "{name}: {rate:.0} views/s wall, {per_cpu} views per CPU-second ({:.1} µs/view wall)",
        1e6 / rate
    );
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let shape = [3usize, 32, 32];
    let n = shape.iter().product::<usize>();
    // deterministic pseudo-random images in [0, 1]
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let images: Vec<Vec<f32>> = (0..256)
        .map(|_| {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect()
        })
        .collect();
    let configs = [
        ("simclr preset (defaults: s=1, blur p=0.5)", r#"{}"#),
        (
            "simclr, lightly-matched (s=0.5, no blur, normalize)",
            r#"{"strength": 0.5, "ops": null, "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}"#,
        ),
        ("byol view 0 (blur p=1)", r#"{"preset": "byol"}"#),
    ];
    for (name, json) in configs {
        let mut cfg: Config = serde_json::from_str(json)?;
        if name.contains("lightly-matched") {
            // the simclr preset with its blur removed
            let mut ops = latent_plugin_pipeline::pipeline::preset(
                latent_plugin_pipeline::pipeline::Preset::Simclr,
                0,
                0.5,
            );
            ops.retain(|o| !matches!(o, latent_plugin_pipeline::Op::Blur(_)));
            cfg.ops = Some(ops);
        }
        let p = Pipeline::new(cfg, &Context::default())?;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let mut views = 0u64;
        let mut checksum = 0.0f32;
        while start.elapsed().as_secs_f64() < secs {
            for (i, img) in images.iter().enumerate() {
                let y = p.apply(img, shape, views + i as u64)?;
                checksum += y[0];
            }
            views += images.len() as u64;
        }
        report(name, views, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        std::hint::black_box(checksum);
    }
    // The same preset through the ABI object the host calls: batches of 256 as one tensor.
    let obj =
        latent_sdk::plugin::new_augmentation::<Pipeline>("{}".into(), &Context::default()).unwrap();
    let batch: Vec<f32> = images.concat();
    let seeds: Vec<u64> = (0..images.len() as u64).collect();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut views = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let x =
            latent_sdk::kit::Tensor::new(vec![images.len(), 3, 32, 32], batch.clone()).into_desc();
        let y = obj.apply(x, seeds.iter().copied().collect()).unwrap();
        assert_eq!(y.data.len(), batch.len());
        views += images.len() as u64;
    }
    report(
        "simclr preset through the ABI, batches of 256",
        views,
        start.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
    );
    Ok(())
}
