//! Augmentation throughput of the `pipeline` plugin's simclr preset on 32x32 RGB, one thread,
//! matched to lightly's `SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`
//! as `bench/lightly_augment.py` runs it: colour-jitter strength 0.5, the blur removed,
//! ImageNet normalization.
//!
//! ```text
//! augment [--seconds 3] [--json FILE] [--plugin-dir DIR]
//! ```
//! The plugin is loaded from the built library and called as the host's loader calls it
//! (`Augment::apply` on a batch with one seed per image): each round decodes 256 fixed random
//! u8 images to f32 in [0, 1] and makes two views of each (SimCLRTransform's two views), all on
//! the calling thread. Reported: views/s and the process's peak RSS.

use anyhow::Result;
use latent_abi::Context;
use latent_bench::*;
use latent_host::data::loader::splitmix64;
use latent_plugin_pipeline::Op;
use latent_sdk::kit::Tensor;
use serde_json::json;
use std::time::Instant;

fn main() -> Result<()> {
    latent_host::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = arg(&args, "--seconds", 3.0)?;
    let reg = registry(plugin_dir(&args)?)?;
    let mut ops = latent_plugin_pipeline::pipeline::preset(
        latent_plugin_pipeline::pipeline::Preset::Simclr,
        0,
        0.5,
    );
    ops.retain(|o| !matches!(o, Op::Blur(_)));
    let cfg = json!({
        "preset": "simclr",
        "strength": 0.5,
        "ops": ops,
        "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    });
    let aug = reg.augmentation("pipeline", &cfg, &Context::default())?;
    let (n, shape) = (256usize, [3usize, 32, 32]);
    let per = shape.iter().product::<usize>();
    let images: Vec<u8> = uniform(n * per, 7).iter().map(|v| (v * 256.0) as u8).collect();

    let mut round = 0u64;
    let mut views = 0u64;
    let mut checksum = 0.0f64;
    let mut run = |round: u64| -> Result<u64> {
        let x: Vec<f32> = images.iter().map(|&b| b as f32 / 255.0).collect();
        let x = Tensor::new(vec![n, shape[0], shape[1], shape[2]], x);
        let mut made = 0;
        for v in 0..2u64 {
            let seeds: Vec<u64> =
                (0..n as u64).map(|i| splitmix64(round * 1_000_003 + i * 2 + v)).collect();
            let y = aug.apply(x.clone(), &seeds)?;
            checksum += y.data[0] as f64;
            made += n as u64;
        }
        Ok(made)
    };
    run(u64::MAX / 2)?; // warm-up
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        views += run(round)?;
        round += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let rate = views as f64 / elapsed;
    emit(
        &args,
        &json!({
            "side": "latent",
            "what": "pipeline plugin (loaded), simclr preset lightly-matched (strength 0.5, no blur, ImageNet normalize), 32x32 RGB, one thread, u8 decode included",
            "config": cfg, "views": views, "seconds": elapsed, "views_per_s": rate, "us_per_view": 1e6 / rate,
            "cpu_seconds": cpu, "views_per_cpu_s": views as f64 / cpu,
            "checksum": checksum, "peak_rss_mib": peak_rss_mib(),
        }),
    )
}
