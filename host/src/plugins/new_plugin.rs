//! `latent new-plugin`: writes a plugin crate skeleton that builds, loads and trains as it is.
//!
//! ```text
//! latent new-plugin --kind objective my-first-loss [--dir DIR] [--sdk-path PATH]
//!   DIR/my-first-loss/Cargo.toml     cdylib + rlib, latent-sdk as a path dependency, own [workspace]
//!   DIR/my-first-loss/src/lib.rs     one file: config, plugin struct, the maths, export_plugins!
//!   DIR/my-first-loss/README.md      how to build, list, train and test it
//!   DIR/my-first-loss/Cargo.lock     copied from the latent checkout (same dependency versions)
//! ```
//! The skeletons: an objective (alignment + uniformity on the unit sphere, forward maths only
//! and a finite-difference test), an encoder (a two-layer MLP, forward only) and an
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
        let hint = suggest(name).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default();
        bail!("plugin name {name:?} is not valid: use lowercase letters, digits and single dashes, starting with a letter (e.g. my-first-loss){hint}");
    }
    Ok(())
}

/// The nearest valid name (`My_Objective` → `my-objective`), if there is one.
fn suggest(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars() {
        match c {
            c if c.is_ascii_alphanumeric() => out.push(c.to_ascii_lowercase()),
            '-' | '_' | ' ' | '.' if !out.is_empty() && !out.ends_with('-') => out.push('-'),
            _ => {}
        }
    }
    let out = out.trim_start_matches(|c: char| !c.is_ascii_lowercase()).trim_end_matches('-').to_string();
    (!out.is_empty() && out != name).then_some(out)
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
//! This file is the forward maths only: the views arrive as traced tensors (`Var`), and the
//! SDK's autodiff returns d L / d views to the host (and fills the gradients of any parameters
//! taken onto the tape with `g.param`).
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

/// The objective. Heads would be fields here (`Head::simclr(&Init::new(ctx.seed).pp("projector"),
/// ...)`), built in `new` and exposed in `visit_params`.
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

/// `log( 1/(N(N−1)) Σ_{i≠j} exp(−t ‖u_i − u_j‖²) )` of unit rows `u` `[N, D]`.
fn uniformity(u: &Var, t: f32) -> Var {
    let n = u.rows();
    let sq = u.matmul_t(u) * -2.0 + 2.0; // ‖u_i − u_j‖² = 2 − 2 u_iᵀu_j for unit rows
    let diagonal: Vec<bool> = (0..n * n).map(|k| k / n == k % n).collect();
    let all = (sq * -t).masked_fill(&diagonal, f32::NEG_INFINITY).reshape(1, n * n);
    all.logsumexp_rows() - ((n * (n - 1)) as f32).ln()
}

impl Objective for {{Type}} {
    fn forward(&mut self, _g: &Graph, b: &Views) -> anyhow::Result<Loss> {
        ensure!(b.views.len() == 2, "{{name}} needs exactly 2 views, got {}", b.views.len());
        let (n, _) = b.views[0].dims();
        ensure!(b.views[1].dims() == b.views[0].dims(), "the two views differ in shape: {:?} and {:?}", b.views[0].dims(), b.views[1].dims());
        ensure!(n >= 2, "{{name}} needs at least 2 samples per batch, got {n}");
        let (ua, ub) = (b.views[0].l2_normalize(), b.views[1].l2_normalize());
        let align = (&ua - &ub).square().sum_rows().mean();
        let unif = (uniformity(&ua, self.cfg.t as f32) + uniformity(&ub, self.cfg.t as f32)) * 0.5;
        let loss = &align + &unif * self.cfg.weight as f32;
        // Metrics are values, off the tape. No target network: set NEEDS_TARGET and
        // `.target_momentum(tau)` to have one.
        Ok(Loss::new(loss).metric("align", align.item()).metric("uniformity", unif.item()))
    }
}

latent_sdk::export_plugins!(objectives: [{{Type}}], encoders: [], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;

    #[test]
    fn gradient_matches_finite_differences() {
        // through the ABI object, as the host calls it (and `latent check-plugin --deep`)
        let ctx = Context::default();
        let mut obj = latent_sdk::plugin::new_objective::<{{Type}}>(abi_stable::std_types::RStr::from_str(""), &ctx).unwrap();
        let views = vec![random(&[5, 4], 1), random(&[5, 4], 2)];
        latent_sdk::check::assert_objective_gradients(&mut obj, views, vec![], vec![], 1e-2, 1e-2);
    }
}
"#;

const ENCODER: &str = r#"//! `{{name}}`: an encoder plugin.
//!
//! ```text
//! x [N, C·H·W] → Linear → BatchNorm1d → ReLU → Linear → [N, out_dim]
//! ```
//! The forward pass only: `Taped<{{Type}}>` (in `export_plugins!`) records it on the SDK's
//! autodiff tape and runs it backward from the host's d loss / d features. Images arrive
//! flattened, with their `[C, H, W]` beside them; the layers are built in `out_dim` (the image
//! size is known only then), from `ctx.seed`. Convolutions, 2-d batch-norm and pooling are in
//! `latent_sdk::autodiff::{nn, ops}` (the `tiny-cnn` example uses them).
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `hidden` | 256 | hidden width |
//! | `out_dim` | 128 | feature size (the default objective, simclr, expects 128) |

use latent_sdk::autodiff::nn::{BatchNorm1d, Linear};
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

/// The layers, named `fc1.*`, `bn1.*`, `fc2.*`.
pub struct Net {
    fc1: Linear,
    bn1: BatchNorm1d,
    fc2: Linear,
}

/// The encoder.
pub struct {{Type}} {
    cfg: Config,
    seed: u64,
    /// The input shape it was built for, and the layers.
    net: Option<([usize; 3], Net)>,
}

impl {{Type}} {
    fn build(&mut self, shape: [usize; 3]) -> anyhow::Result<&mut Net> {
        if let Some((built, _)) = &self.net {
            ensure!(*built == shape, "{{name}} was built for images of shape {built:?}, got {shape:?}");
        } else {
            let init = Init::new(self.seed);
            let net = Net {
                fc1: Linear::new(&init.pp("fc1"), shape.iter().product(), self.cfg.hidden, false),
                bn1: BatchNorm1d::new(&init.pp("bn1"), self.cfg.hidden),
                fc2: Linear::new(&init.pp("fc2"), self.cfg.hidden, self.cfg.out_dim, true),
            };
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
            net.fc1.visit_params(f);
            net.bn1.visit_params(f);
            net.fc2.visit_params(f);
        }
    }
}

impl Encoder for {{Type}} {
    fn out_dim(&mut self, input: [usize; 3]) -> anyhow::Result<usize> {
        self.build(input)?;
        Ok(self.cfg.out_dim)
    }

    fn forward(&mut self, g: &Graph, images: &Var, chw: [usize; 3]) -> anyhow::Result<Var> {
        ensure!(!g.train() || images.rows() >= 2, "training with batch norm needs at least 2 images, got {}", images.rows());
        let net = self.build(chw)?;
        let h = net.fc1.forward(g, images);
        let h = net.bn1.forward(g, &h).relu();
        Ok(net.fc2.forward(g, &h))
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [Taped<{{Type}}>], augmentations: []);

#[cfg(test)]
mod tests {
    use super::*;
    use latent_sdk::kit::gradcheck::random;

    #[test]
    fn gradients_match_finite_differences() {
        // through the ABI object, as the host calls it (and `latent check-plugin --deep`)
        let ctx = Context::default();
        let cfg = abi_stable::std_types::RStr::from_str("{\"hidden\": 6, \"out_dim\": 3}");
        let mut enc = latent_sdk::plugin::new_encoder::<Taped<{{Type}}>>(cfg, &ctx).unwrap();
        enc.out_dim(vec![1u64, 2, 3].into()).unwrap();
        let opts = latent_sdk::check::FdOptions { h: 1e-2, ..Default::default() };
        let errs = latent_sdk::check::encoder_gradients(&mut enc, &random(&[4, 1, 2, 3], 7), opts).unwrap();
        assert!(errs.len() == 5 && errs.iter().all(|e| e.error < 2e-2), "{errs:?}");
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
        // issue 15: a near miss gets the valid spelling
        let e = check_name("my_objective").unwrap_err().to_string();
        assert!(e.contains("did you mean `my-objective`?"), "{e}");
        assert_eq!(suggest("My__Objective "), Some("my-objective".into()));
        assert_eq!(suggest("1x"), Some("x".into()));
        assert_eq!(suggest("---"), None);
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
