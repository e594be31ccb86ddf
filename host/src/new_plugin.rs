//! `latent new-plugin`: writes a plugin crate skeleton that builds, loads and trains as it is.
//!
//! ```text
//! latent new-plugin --kind objective my-first-loss [--dir DIR] [--sdk-path PATH]
//!   DIR/my-first-loss/Cargo.toml     cdylib + rlib, latent-sdk as a path dependency, own [workspace]
//!   DIR/my-first-loss/src/lib.rs     one file: config, plugin struct, the maths, export_plugins!
//!   DIR/my-first-loss/README.md      how to build, list, train and test it
//!   DIR/my-first-loss/Cargo.lock     copied from the latent checkout (same dependency versions)
//! ```
//! The skeletons: an objective (alignment + uniformity on the unit sphere, with its gradient
//! and a finite-difference test), an encoder (a two-layer MLP from kit layers) and an
//! augmentation (a random horizontal flip, a pure function of (image, seed)).
//!
//! `latent-sdk` is found at `../sdk` beside the `latent-host` crate this binary was built from
//! (fixed at compile time), or at `--sdk-path`. The crate has its own `[workspace]` table so it
//! builds standalone, also when written inside another Cargo workspace.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

/// The kind of plugin to write.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A loss on embeddings (with heads if it wants them).
    Objective,
    /// A backbone: images to features.
    Encoder,
    /// A per-view image transform.
    Augmentation,
}

/// What `latent new-plugin` was asked.
#[derive(Clone, Debug)]
pub struct NewPluginArgs {
    /// Objective, encoder or augmentation.
    pub kind: Kind,
    /// Plugin name (`my-first-loss`); also the crate's directory.
    pub name: String,
    /// Parent directory of the crate (default: the current directory).
    pub dir: Option<PathBuf>,
    /// The `sdk/` directory of a latent checkout (default: the one this binary was built from).
    pub sdk_path: Option<PathBuf>,
}

/// The `sdk/` directory of the checkout this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk")
}

/// Checks a plugin name: lowercase ASCII letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!("plugin name {name:?} is not valid: use lowercase letters, digits and single dashes, starting with a letter (e.g. my-first-loss)");
    }
    Ok(())
}

/// `my-first-loss` → `MyFirstLoss`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Runs `latent new-plugin`.
pub fn run(args: NewPluginArgs) -> Result<i32> {
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let dest = parent.join(&args.name);
    let files = generate(args.kind, &args.name, &dest, args.sdk_path.as_deref())?;
    println!("wrote {} plugin '{}' in {}:", kind_str(args.kind), args.name, dest.display());
    for f in &files {
        println!("  {}", f.display());
    }
    let d = dest.display();
    println!("\nnext:");
    println!("  cd {d} && cargo build --release");
    println!("  latent --plugin-dir {d}/target/release plugins");
    let try_it = match args.kind {
        Kind::Objective => format!("--set objective.plugin={}", args.name),
        Kind::Encoder => format!("--set encoder.plugin={}", args.name),
        Kind::Augmentation => format!("--set 'augment=[{{plugin=\"{0}\"}}, {{plugin=\"{0}\"}}]'", args.name),
    };
    println!("  latent --plugin-dir {d}/target/release train {try_it} --set train.max_steps=20 --set train.batch_size=64");
    Ok(0)
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Objective => "objective",
        Kind::Encoder => "encoder",
        Kind::Augmentation => "augmentation",
    }
}

/// Writes the crate for plugin `name` of `kind` into `dest` (which must not exist or be
/// empty); returns the files written.
pub fn generate(kind: Kind, name: &str, dest: &Path, sdk_path: Option<&Path>) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    let sdk = match sdk_path {
        Some(p) => p.to_path_buf(),
        None => default_sdk_path(),
    };
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "no latent-sdk at {} (looked for {}): pass --sdk-path pointing at the sdk/ directory of a latent checkout",
            sdk.display(),
            sdk.join("Cargo.toml").display()
        );
    }
    let sdk = sdk.canonicalize().with_context(|| format!("cannot resolve {}", sdk.display()))?;
    if dest.exists() && std::fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty: choose another name or --dir", dest.display());
    }
    let sdk_str = sdk.to_str().with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    let subst = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{Type}}", &type_name(name))
            .replace("{{crate}}", &format!("latent-plugin-{name}"))
            .replace("{{lib}}", &format!("latent_plugin_{}", name.replace('-', "_")))
            .replace("{{kind}}", kind_str(kind))
            .replace("{{sdk}}", &toml::Value::String(sdk_str.to_string()).to_string())
            .replace("{{sdk_dir}}", sdk_str)
            .replace("{{train_set}}", match kind {
                Kind::Objective => "--set objective.plugin={{name}}",
                Kind::Encoder => "--set encoder.plugin={{name}}",
                Kind::Augmentation => "--set 'augment=[{plugin=\"{{name}}\"}, {plugin=\"{{name}}\"}]'",
            })
            .replace("{{name}}", name)
    };
    let lib = match kind {
        Kind::Objective => OBJECTIVE,
        Kind::Encoder => ENCODER,
        Kind::Augmentation => AUGMENTATION,
    };
    std::fs::create_dir_all(dest.join("src")).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut written = Vec::new();
    let mut write = |rel: &str, text: String| -> Result<()> {
        let p = dest.join(rel);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        written.push(p);
        Ok(())
    };
    write("Cargo.toml", subst(CARGO_TOML))?;
    write("src/lib.rs", subst(lib))?;
    write("README.md", subst(README))?;
    write(".gitignore", "/target\n".to_string())?;
    // The checkout's lock file pins every dependency to the versions the host was built and
    // tested with; cargo drops the entries this crate does not use.
    if let Some(lock) = sdk.parent().map(|p| p.join("Cargo.lock")).filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&lock).with_context(|| format!("cannot read {}", lock.display()))?;
        write("Cargo.lock", text)?;
    }
    Ok(written)
}

const CARGO_TOML: &str = r#"[package]
name = "{{crate}}"
version = "0.1.0"
edition = "2021"
description = "latent {{kind}} plugin '{{name}}'"
publish = false

[lib]
# cdylib: the library `latent` loads; rlib: so `cargo test` can run the unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK of the latent checkout this crate was generated from (`latent new-plugin --sdk-path`).
latent-sdk = { path = {{sdk}} }
abi_stable = "0.11.3"
serde = { version = "1", features = ["derive"] }
anyhow = "1"

# A workspace of its own, so the crate builds standalone wherever it lives.
[workspace]
"#;

const README: &str = r#"# {{name}}: a latent {{kind}} plugin

Generated by `latent new-plugin --kind {{kind}} {{name}}`. The whole plugin is `src/lib.rs`;
the SDK guide is `cargo doc -p latent-sdk --open` (the crate documentation of `latent-sdk`),
and `docs/TUTORIAL.md` in the latent checkout walks through it.

```sh
cargo build --release     # writes target/release/lib{{lib}}.so (.dylib on macOS, .dll on Windows)
cargo test                # unit tests, e.g. the gradient against finite differences

# where latent finds it: --plugin-dir, or LATENT_PLUGIN_PATH (a path list)
latent --plugin-dir target/release plugins
latent --plugin-dir target/release train {{train_set}} --set train.max_steps=20 --set train.batch_size=64
export LATENT_PLUGIN_PATH=$PWD/target/release     # or once for the shell
```

The SDK is a path dependency on `{{sdk_dir}}`. A plugin must be built against the same
latent-sdk version as the host (same major, and for 0.x the same minor): `latent plugins`
says so when it is not.
"#;

const OBJECTIVE: &str = r#"//! `{{name}}`: an objective plugin.
//!
//! Alignment and uniformity on the unit sphere (Wang and Isola 2020,
//! <https://arxiv.org/abs/2005.10242>), a small loss that trains as it is; replace it with
//! yours.
//!
//! ```text
//! u_i   = z_i / ‖z_i‖                                           each view, [N, D]
//! align = 1/N Σ_i ‖uᴬ_i − uᴮ_i‖²
//! unif  = log( 1/(N(N−1)) Σ_{i≠j} exp(−t ‖u_i − u_j‖²) )       per view, averaged over the two
//! L     = align + weight · (unif(uᴬ) + unif(uᴮ)) / 2
//! ```
//! Gradient: `∂align/∂uᴬ_i = 2 (uᴬ_i − uᴮ_i) / N` (and the negative for uᴮ);
//! `∂unif/∂u_i = −4t Σ_{j≠i} w_ij (u_i − u_j)` with `w_ij = exp(−t‖u_i − u_j‖²) / Σ_{k≠l} exp(−t‖u_k − u_l‖²)`;
//! through the normalisation `∂L/∂z_i = (∂L/∂u_i − u_i (u_iᵀ ∂L/∂u_i)) / ‖z_i‖`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `t` | 2.0 | uniformity temperature |
//! | `weight` | 1.0 | weight of the uniformity term |

use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Uniformity temperature t.
    pub t: f64,
    /// Weight of the uniformity term.
    pub weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { t: 2.0, weight: 1.0 }
    }
}

/// The objective. Heads (a projector, a predictor) would be fields here, built in `new` from
/// kit layers and exposed in `visit_params`.
pub struct {{Type}} {
    cfg: Config,
}

impl Plugin for {{Type}} {
    type Config = Config;
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str = "alignment + uniformity on the unit sphere";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.t > 0.0, "t must be positive, got {}", cfg.t);
        ensure!(cfg.weight >= 0.0, "weight must be non-negative, got {}", cfg.weight);
        Ok({{Type}} { cfg })
    }
}

impl Module for {{Type}} {
    // No parameters. With heads: `self.head.visit_params(f)`.
    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}
}

/// Rows of `z` `[n, d]` scaled to unit length, in f64, with their norms.
fn normalize(z: &Tensor, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut u: Vec<f64> = z.data.iter().map(|&v| v as f64).collect();
    let mut norms = Vec::new();
    for row in u.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
        norms.push(n);
    }
    (u, norms)
}

/// `unif(u)` and adds `weight · ∂unif/∂u` to `du`.
fn uniformity(u: &[f64], n: usize, d: usize, t: f64, weight: f64, du: &mut [f64]) -> f64 {
    let sq = |i: usize, j: usize| (0..d).map(|k| (u[i * d + k] - u[j * d + k]).powi(2)).sum::<f64>();
    let mut e = vec![0.0; n * n];
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                e[i * n + j] = (-t * sq(i, j)).exp();
                s += e[i * n + j];
            }
        }
    }
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let w = -4.0 * t * e[i * n + j] / s * weight;
                for k in 0..d {
                    du[i * d + k] += w * (u[i * d + k] - u[j * d + k]);
                }
            }
        }
    }
    (s / (n * (n - 1)) as f64).ln()
}

impl ObjectivePlugin for {{Type}} {
    fn compute(&mut self, b: ObjectiveBatch) -> anyhow::Result<ObjectiveResult> {
        ensure!(b.views.len() == 2, "{{name}} needs exactly 2 views, got {}", b.views.len());
        let (n, d) = b.views[0].dims2("view 0")?;
        ensure!(b.views[1].shape == b.views[0].shape, "the two views differ in shape: {:?} and {:?}", b.views[0].shape, b.views[1].shape);
        ensure!(n >= 2, "{{name}} needs at least 2 samples per batch, got {n}");
        let (ua, na) = normalize(&b.views[0], d);
        let (ub, nb) = normalize(&b.views[1], d);
        let (mut dua, mut dub) = (vec![0.0; n * d], vec![0.0; n * d]);
        let mut align = 0.0;
        for k in 0..n * d {
            let diff = ua[k] - ub[k];
            align += diff * diff / n as f64;
            dua[k] = 2.0 * diff / n as f64;
            dub[k] = -2.0 * diff / n as f64;
        }
        let half = self.cfg.weight / 2.0;
        let unif_a = uniformity(&ua, n, d, self.cfg.t, half, &mut dua);
        let unif_b = uniformity(&ub, n, d, self.cfg.t, half, &mut dub);
        let loss = align + half * (unif_a + unif_b);
        // back through the normalisation: dz = (du − u (uᵀ du)) / ‖z‖
        let back = |u: &[f64], norms: &[f64], du: &[f64]| {
            let mut dz = vec![0f32; n * d];
            for i in 0..n {
                let r = i * d..(i + 1) * d;
                let dot: f64 = u[r.clone()].iter().zip(&du[r.clone()]).map(|(a, b)| a * b).sum();
                for k in r {
                    dz[k] = ((du[k] - u[k] * dot) / norms[i]) as f32;
                }
            }
            Tensor::new(vec![n, d], dz)
        };
        let grads = if b.train { vec![back(&ua, &na, &dua), back(&ub, &nb, &dub)] } else { vec![] };
        Ok(ObjectiveResult {
            loss: loss as f32,
            grads,
            metrics: vec![("loss".into(), loss), ("align".into(), align), ("uniformity".into(), (unif_a + unif_b) / 2.0)],
            // 1: no target network (set NEEDS_TARGET and return an EMA rate to have one)
            target_momentum: 1.0,
        })
    }
}

latent_sdk::export_plugins!(objectives: [{{Type}}], encoders: [], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;

    fn loss(p: &mut {{Type}}, views: &[Tensor]) -> (f64, Vec<Tensor>) {
        let b = ObjectiveBatch { views: views.to_vec(), targets: vec![], labels: vec![], step: 0, total_steps: 1, train: true };
        let r = p.compute(b).unwrap();
        (r.metrics[0].1, r.grads)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut p = {{Type}}::new(Config::default(), &Context::default()).unwrap();
        let views = vec![random(&[5, 4], 1), random(&[5, 4], 2)];
        let (_, grads) = loss(&mut p, &views);
        let h = 1e-3;
        for v in 0..2 {
            for k in 0..views[v].len() {
                let mut vs = views.clone();
                vs[v].data[k] += h;
                let lp = loss(&mut p, &vs).0;
                vs[v].data[k] -= 2.0 * h;
                let lm = loss(&mut p, &vs).0;
                let num = (lp - lm) / (2.0 * h as f64);
                let ana = grads[v].data[k] as f64;
                assert!((num - ana).abs() < 1e-3 * num.abs().max(1.0), "view {v} index {k}: analytic {ana}, numeric {num}");
            }
        }
    }
}
"#;

const ENCODER: &str = r#"//! `{{name}}`: an encoder plugin.
//!
//! ```text
//! x [N, C, H, W] → flatten [N, C·H·W] → Linear → BatchNorm1d → ReLU → Linear → [N, out_dim]
//! ```
//! The image size is known only when the host calls `out_dim([C, H, W])`, so the layers are
//! built there (from `ctx.seed`). Every kit layer has a hand-written backward; `Sequential`
//! runs them in order and back.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `hidden` | 256 | hidden width |
//! | `out_dim` | 128 | feature size (the default objective, simclr, expects 128) |

use latent_sdk::kit::{Flatten, Sequential};
use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Hidden width.
    pub hidden: usize,
    /// Feature size.
    pub out_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { hidden: 256, out_dim: 128 }
    }
}

/// The encoder.
pub struct {{Type}} {
    cfg: Config,
    seed: u64,
    /// The input shape it was built for, and the layers.
    net: Option<([usize; 3], Sequential)>,
}

impl {{Type}} {
    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<&mut Sequential> {
        if let Some((built, _)) = &self.net {
            ensure!(*built == shape, "{{name}} was built for images of shape {built:?}, got {shape:?}");
        } else {
            let init = Init::new(self.seed);
            let net = Sequential::new()
                .push(Flatten::new())
                .push(Linear::new(&init.pp("fc1"), shape.iter().product(), self.cfg.hidden, false))
                .push(BatchNorm::new(&init.pp("bn1"), self.cfg.hidden))
                .push(Relu::new())
                .push(Linear::new(&init.pp("fc2"), self.cfg.hidden, self.cfg.out_dim, true));
            self.net = Some((shape, net));
        }
        Ok(&mut self.net.as_mut().expect("built above").1)
    }
}

impl Plugin for {{Type}} {
    type Config = Config;
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str = "two-layer MLP on the flattened image";

    fn new(cfg: Config, ctx: &Context) -> anyhow::Result<Self> {
        ensure!(cfg.hidden >= 1 && cfg.out_dim >= 1, "hidden and out_dim must be at least 1");
        Ok({{Type}} { cfg, seed: ctx.seed, net: None })
    }
}

impl Module for {{Type}} {
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some((_, net)) = &mut self.net {
            net.visit_params(f);
        }
    }
}

impl EncoderPlugin for {{Type}} {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.cfg.out_dim)
    }

    fn forward(&mut self, images: Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (n, c, h, w) = images.dims4("images")?;
        ensure!(!train || n >= 2, "training with batch norm needs at least 2 images, got {n}");
        Ok(self.build([c, h, w])?.forward(&images, train))
    }

    fn backward(&mut self, grad: Tensor) -> anyhow::Result<()> {
        let (_, net) = self.net.as_mut().context("backward before any forward")?;
        net.backward(&grad);
        Ok(())
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [{{Type}}], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::check_layer;

    #[test]
    fn gradients_match_finite_differences() {
        let mut e = {{Type}}::new(Config { hidden: 6, out_dim: 3 }, &Context::default()).unwrap();
        let net = e.build([1, 2, 3]).unwrap();
        check_layer(net, &[4, 1, 2, 3], 7, 2e-2);
    }
}
"#;

const AUGMENTATION: &str = r#"//! `{{name}}`: an augmentation plugin.
//!
//! A random horizontal flip with probability `p`. An augmentation is a pure function of
//! (image, seed): loader threads share one instance and call `apply` concurrently, so all
//! randomness comes from the call's `seed` (here a SplitMix64 step), never from global state.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `p` | 0.5 | probability of flipping |

use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Probability of flipping.
    pub p: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { p: 0.5 }
    }
}

/// The augmentation.
pub struct {{Type}} {
    cfg: Config,
}

/// Uniform in [0, 1) from a seed (SplitMix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

impl Plugin for {{Type}} {
    type Config = Config;
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str = "random horizontal flip";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        ensure!((0.0..=1.0).contains(&cfg.p), "p must be in [0, 1], got {}", cfg.p);
        Ok({{Type}} { cfg })
    }
}

impl AugmentationPlugin for {{Type}} {
    fn output_shape(&self, input: [usize; 3]) -> anyhow::Result<[usize; 3]> {
        Ok(input)
    }

    fn apply(&self, image: &[f32], [_c, _h, w]: [usize; 3], seed: u64) -> anyhow::Result<Vec<f32>> {
        let mut out = image.to_vec();
        if w > 0 && unit(seed) < self.cfg.p {
            out.chunks_mut(w).for_each(|row| row.reverse());
        }
        Ok(out)
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [], augmentations: [{{Type}}]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_view() {
        let a = {{Type}}::new(Config::default(), &Context::default()).unwrap();
        let img: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        assert_eq!(a.apply(&img, [1, 3, 4], 9).unwrap(), a.apply(&img, [1, 3, 4], 9).unwrap());
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_turned_into_types() {
        assert!(check_name("my-first-loss").is_ok());
        for bad in ["", "My", "1x", "a_b", "a-", "a--b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-first-loss"), "MyFirstLoss");
        assert_eq!(type_name("vicreg2"), "Vicreg2");
    }

    #[test]
    fn writes_a_crate_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("my-enc");
        let files = generate(Kind::Encoder, "my-enc", &dest, None).unwrap();
        assert!(files.iter().any(|f| f.ends_with("src/lib.rs")));
        let toml = std::fs::read_to_string(dest.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"latent-plugin-my-enc\"") && toml.contains("[workspace]"), "{toml}");
        let lib = std::fs::read_to_string(dest.join("src/lib.rs")).unwrap();
        assert!(lib.contains("pub struct MyEnc") && lib.contains("const NAME: &'static str = \"my-enc\";"));
        assert!(!lib.contains("{{"), "every placeholder replaced");
        let e = generate(Kind::Encoder, "my-enc", &dest, None).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = generate(Kind::Objective, "x", &dir.path().join("x"), Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("--sdk-path"), "{e}");
    }
}
