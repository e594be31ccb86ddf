//! `latent check-plugin FILE --deep`: every objective and encoder of a library, through the ABI,
//! with its default config (head sizes capped at 64 for objectives) — gradients against finite differences, determinism, finite losses
//! on degenerate input — one line per check with the worst error.

use abi_stable::std_types::RStr;
use anyhow::Result;
use latent_abi::{Context, Manifest, PluginKind, PluginLibRef};
use latent_sdk::check::{self, FdOptions, ObjectiveCase, TensorError};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::kit::Tensor;

/// A tensor passes when its relative error is below this.
pub const TOLERANCE: f64 = 1e-1;
const BATCH: usize = 8;
const ENTRIES: usize = 6;

/// Runs the checks of every objective and encoder in `lib`; true when all pass.
pub fn run(lib: PluginLibRef, manifests: &[Manifest]) -> Result<bool> {
    println!(
        "deep check: default config (objectives: head sizes capped at {MAX_DIM}), seed 0, batch {BATCH}, finite differences of step 1e-3 (then 1e-2 and 2.5e-4 where off) on up to {ENTRIES} entries per tensor, pass below {TOLERANCE:.0e}"
    );
    let mut all = true;
    for m in manifests {
        let ok = match m.kind {
            PluginKind::Objective => objective(lib, m),
            PluginKind::Encoder => encoder(lib, m),
            _ => continue,
        };
        all &= ok;
    }
    Ok(all)
}

fn line(check: &str, r: Result<String>) -> bool {
    match r {
        Ok(s) => {
            println!("    {check:<12} ok    {s}");
            true
        }
        Err(e) => {
            println!("    {check:<12} FAIL  {e:#}");
            false
        }
    }
}

fn gradients(mut errs: impl FnMut(FdOptions) -> Result<Vec<TensorError>>) -> Result<String> {
    let o = FdOptions { h: 1e-3, max_entries: ENTRIES, floor: 1e-2 };
    let mut e = errs(o)?;
    // A ReLU or max-pool kink within one step of an entry spoils that difference but not a
    // smaller step's; f32 rounding of a large loss spoils a small step but not a larger one. A
    // wrong gradient stays wrong at every step, so each tensor keeps its best step.
    for h in [1e-2, 2.5e-4] {
        if e.iter().all(|t| t.error < TOLERANCE) {
            break;
        }
        for (a, b) in e.iter_mut().zip(errs(FdOptions { h, ..o })?) {
            a.error = a.error.min(b.error);
        }
    }
    let worst = e
        .iter()
        .max_by(|a, b| a.error.total_cmp(&b.error))
        .ok_or_else(|| anyhow::anyhow!("nothing to check"))?;
    let bad: Vec<String> = e
        .iter()
        .filter(|t| t.error.is_nan() || t.error >= TOLERANCE)
        .map(|t| format!("{} ({:.1e})", t.name, t.error))
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "off in {}: {}",
        if bad.len() == 1 { "one tensor" } else { "several tensors" },
        bad.join(", ")
    );
    Ok(format!("worst {:.1e} in {} ({} tensors)", worst.error, worst.name, e.len()))
}

/// Head sizes above this are capped in the objective checks: DINO's default 65,536 prototypes
/// behind a 2048-wide MLP make each of the check's hundreds of loss evaluations take a second,
/// and the maths checked is the same at any width.
const MAX_DIM: u64 = 64;

/// The default config with every size key (`*_dim` but `input_dim`) above [`MAX_DIM`] capped;
/// the JSON text, and `key default → cap` for each key capped.
fn small_config(default: &str) -> (String, Vec<String>) {
    let Ok(serde_json::Value::Object(mut cfg)) = serde_json::from_str::<serde_json::Value>(default)
    else {
        return (String::new(), Vec::new());
    };
    let mut shrunk = Vec::new();
    for (k, v) in cfg.iter_mut() {
        if k.ends_with("_dim") && k != "input_dim" {
            if let Some(n) = v.as_u64().filter(|&n| n > MAX_DIM) {
                shrunk.push(format!("{k} {n} → {MAX_DIM}"));
                *v = serde_json::json!(MAX_DIM);
            }
        }
    }
    (serde_json::Value::Object(cfg).to_string(), shrunk)
}

fn objective(lib: PluginLibRef, m: &Manifest) -> bool {
    println!("  {} (objective)", m.name);
    let ctx = Context::default();
    let (config, shrunk) = small_config(&m.default_config);
    if !shrunk.is_empty() {
        println!("    (sizes capped at {MAX_DIM} for speed: {})", shrunk.join(", "));
    }
    let new = || -> Result<latent_abi::ObjectiveBox> {
        (lib.new_objective())(RStr::from_str(&m.name), RStr::from_str(&config), &ctx)
            .into_result()
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let cfg: serde_json::Value = serde_json::from_str(&m.default_config).unwrap_or_default();
    let dim = cfg.get("input_dim").and_then(|v| v.as_u64()).unwrap_or(16) as usize;
    let case = |seed: u64, fill: Option<f32>| {
        let t = |s: u64| match fill {
            Some(v) => Tensor::new(vec![BATCH, dim], vec![v; BATCH * dim]),
            None => random(&[BATCH, dim], s),
        };
        ObjectiveCase {
            views: vec![t(seed), t(seed + 1)],
            targets: if m.needs_target { vec![t(seed + 2), t(seed + 3)] } else { vec![] },
            labels: if m.needs_labels {
                (0..BATCH as i64).map(|i| i / 2).collect()
            } else {
                vec![]
            },
        }
    };
    let mut ok = line(
        "gradients",
        new().and_then(|mut o| {
            gradients(|opt| check::objective_gradients(&mut o, &case(1, None), opt))
        }),
    );
    ok &= line(
        "determinism",
        (|| {
            let a = check::objective_bits(&mut new()?, &case(1, None))?;
            let b = check::objective_bits(&mut new()?, &case(1, None))?;
            anyhow::ensure!(
                a == b,
                "two instances with seed 0 differ in {} of {} values",
                a.iter().zip(&b).filter(|(x, y)| x != y).count(),
                a.len()
            );
            Ok(format!(
                "two instances with seed 0: identical bits (loss and {} gradient values)",
                a.len() - 1
            ))
        })(),
    );
    ok &= line(
        "finite",
        (|| {
            for (what, c) in [
                ("zero", case(1, Some(0.0))),
                ("constant", case(1, Some(0.5))),
                ("random", case(5, None)),
            ] {
                check::objective_finite(&mut new()?, &c)
                    .map_err(|e| e.context(format!("{what} views")))?;
            }
            Ok("loss and gradients finite on zero, constant and random views".to_string())
        })(),
    );
    ok
}

fn encoder(lib: PluginLibRef, m: &Manifest) -> bool {
    println!("  {} (encoder)", m.name);
    let ctx = Context::default();
    let build = || -> Result<(latent_abi::EncoderBox, [usize; 3])> {
        let mut last = None;
        for shape in [[1, 28, 28], [3, 32, 32]] {
            let mut e = (lib.new_encoder())(RStr::from_str(&m.name), RStr::from_str(""), &ctx)
                .into_result()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match e.out_dim(shape.iter().map(|&d| d as u64).collect()).into_result() {
                Ok(_) => return Ok((e, shape)),
                Err(err) => last = Some(err),
            }
        }
        anyhow::bail!(
            "refuses 1x28x28 and 3x32x32 images: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    };
    let images = |shape: [usize; 3], fill: Option<f32>| {
        let dims = [4, shape[0], shape[1], shape[2]];
        match fill {
            Some(v) => Tensor::new(dims.to_vec(), vec![v; dims.iter().product()]),
            None => {
                let mut t = random(&dims, 3);
                t.data.iter_mut().for_each(|x| *x = 0.5 + 0.5 * *x);
                t
            }
        }
    };
    let mut ok = line(
        "gradients",
        build().and_then(|(mut e, s)| {
            gradients(|opt| check::encoder_gradients(&mut e, &images(s, None), opt))
        }),
    );
    ok &= line(
        "determinism",
        (|| {
            let ((mut a, s), (mut b, _)) = (build()?, build()?);
            let (x, y) = (
                check::encoder_bits(&mut a, &images(s, None))?,
                check::encoder_bits(&mut b, &images(s, None))?,
            );
            anyhow::ensure!(
                x == y,
                "two instances with seed 0 differ in {} of {} values",
                x.iter().zip(&y).filter(|(p, q)| p != q).count(),
                x.len()
            );
            Ok(format!(
                "two instances with seed 0: identical bits ({} feature and gradient values)",
                x.len()
            ))
        })(),
    );
    ok &= line(
        "finite",
        (|| {
            for (what, fill) in [("zero", Some(0.0)), ("constant", Some(0.5)), ("random", None)] {
                let (mut e, s) = build()?;
                check::encoder_finite(&mut e, &images(s, fill))
                    .map_err(|err| err.context(format!("{what} images")))?;
            }
            Ok("features and gradients finite on zero, constant and random images".to_string())
        })(),
    );
    ok
}
