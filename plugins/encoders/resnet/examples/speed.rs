//! Times resnet-mini forward (train mode) + backward at batch 512 on 1x28x28 inputs: the
//! encoder's share of a SimCLR step. Compare with `bench/torch_resnet_mini.py`.
//!
//! ```text
//! cargo run --release -p latent-plugin-resnet --example speed [-- --threads 2 --batch 512 --runs 5 --layers]
//! ```
//! `--layers` also times each convolution shape of the model alone (forward and backward) and
//! each batch-norm shape (fused with the ReLU), to show where the time goes.
//!
//! The `latent` binary has glibc keep freed memory for reuse (`latent_host::memory`); this
//! example does not link the host, so to time what a training run sees, give it the same
//! settings: `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4000000000`.
//! Without them every pass faults its buffers in again (on a 2-core EPYC VM, two consecutive
//! commands, not interleaved, load not recorded: forward + backward 780–810 ms without,
//! 600–640 ms with).

use latent_plugin_resnet::{bn::BnRelu, Config, ResNet};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::kit::{Conv2d, Conv2dConfig, Init, Layer, Tensor};
use latent_sdk::prelude::{Context, EncoderPlugin, Plugin};
use std::time::Instant;

/// CPU seconds of this process so far, all threads (user + system, from /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // after the name: state ppid ... utime is field 14 of the line, the 12th after ')'
    f.get(10).zip(f.get(11)).map_or(0.0, |(u, s)| (u + s) / 100.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median (forward, backward) seconds of `runs` timed passes after one warm-up.
fn time_layer(layer: &mut dyn Layer, x: &Tensor, runs: usize) -> (f64, f64) {
    let mut f = Vec::new();
    let mut b = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        let y = layer.forward(x, true);
        let t1 = Instant::now();
        layer.backward(&y);
        let t2 = Instant::now();
        if i > 0 {
            f.push((t1 - t0).as_secs_f64());
            b.push((t2 - t1).as_secs_f64());
        }
    }
    (median(f), median(b))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let (threads, batch, runs) = (arg("--threads", 2), arg("--batch", 512), arg("--runs", 5));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;

    let mut net = ResNet::new(Config::default(), &Context { seed: 0, ..Context::default() })?;
    let d = net.out_dim([1, 28, 28])?;
    let x = random(&[batch, 1, 28, 28], 1);
    let r = random(&[batch, d], 2);
    let mut fw = Vec::new();
    let mut bw = Vec::new();
    let mut tot = Vec::new();
    let mut cpu = Vec::new();
    for i in 0..=runs {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let y = net.forward(x.clone(), true)?;
        let t1 = Instant::now();
        net.backward(r.clone())?;
        let t2 = Instant::now();
        assert_eq!(y.shape, vec![batch, d]);
        if i > 0 {
            fw.push((t1 - t0).as_secs_f64());
            bw.push((t2 - t1).as_secs_f64());
            tot.push((t2 - t0).as_secs_f64());
            cpu.push(cpu_seconds() - c0);
        }
    }
    let t = median(tot);
    println!(
        "latent resnet-mini threads {threads} batch {batch}: forward {:.0} ms, backward {:.0} ms, forward+backward median {:.0} ms ({:.0} images/s), cpu {:.0} ms",
        median(fw) * 1e3,
        median(bw) * 1e3,
        t * 1e3,
        batch as f64 / t,
        median(cpu) * 1e3
    );

    if args.iter().any(|a| a == "--layers") {
        // (name, in channels, out channels, kernel, stride, input side, count in the model)
        let convs = [
            ("stem 1->32 3x3 28", 1, 32, 3, 1, 28, 1),
            ("s1 32->32 3x3 28", 32, 32, 3, 1, 28, 2),
            ("s2.conv1 32->64 3x3/2 28", 32, 64, 3, 2, 28, 1),
            ("s2.conv2 64->64 3x3 14", 64, 64, 3, 1, 14, 1),
            ("s2.short 32->64 1x1/2 28", 32, 64, 1, 2, 28, 1),
            ("s3.conv1 64->128 3x3/2 14", 64, 128, 3, 2, 14, 1),
            ("s3.conv2 128->128 3x3 7", 128, 128, 3, 1, 7, 1),
            ("s3.short 64->128 1x1/2 14", 64, 128, 1, 2, 14, 1),
        ];
        let mut sum = 0.0;
        println!(
            "{:<28} {:>9} {:>9} {:>8} {:>8}",
            "conv (batch {batch})", "fwd ms", "bwd ms", "GF/s f", "GF/s b"
        );
        for (name, cin, cout, k, s, side, count) in convs {
            let cfg = Conv2dConfig { stride: s, padding: k / 2, groups: 1, bias: false };
            let mut conv = Conv2d::new(&Init::new(0), cin, cout, k, cfg);
            let x = random(&[batch, cin, side, side], 3);
            let (f, b) = time_layer(&mut conv, &x, runs.min(3));
            let o = (side + 2 * (k / 2) - k) / s + 1;
            let flops = 2.0 * (batch * cout * o * o * cin * k * k) as f64;
            println!(
                "{name:<28} {:>9.1} {:>9.1} {:>8.1} {:>8.1}  x{count}",
                f * 1e3,
                b * 1e3,
                flops / f / 1e9,
                2.0 * flops / b / 1e9
            );
            sum += (f + b) * count as f64;
        }
        let mut bn_sum = 0.0;
        for (c, side, count) in [(32, 28, 4), (64, 14, 3), (128, 7, 3)] {
            let mut bn = BnRelu::new(&Init::new(0), c, true);
            let x = random(&[batch, c, side, side], 4);
            let (mut fs, mut bs) = (Vec::new(), Vec::new());
            for _ in 0..=runs.min(3) {
                let t0 = Instant::now();
                let y = bn.forward(x.clone(), true);
                let t1 = Instant::now();
                bn.backward(y);
                fs.push((t1 - t0).as_secs_f64());
                bs.push(t1.elapsed().as_secs_f64());
            }
            let (f, b) = (median(fs), median(bs));
            println!(
                "{:<28} {:>9.1} {:>9.1}  x{count}",
                format!("batch-norm+relu {c}x{side}x{side}"),
                f * 1e3,
                b * 1e3
            );
            bn_sum += (f + b) * count as f64;
        }
        println!("convolutions {:.0} ms, batch norms {:.0} ms, rest (relu, residual adds, copies) {:.0} ms of {:.0} ms", sum * 1e3, bn_sum * 1e3, (t - sum - bn_sum) * 1e3, t * 1e3);
    }
    Ok(())
}
