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
    let out =
        out.trim_start_matches(|c: char| !c.is_ascii_lowercase()).trim_end_matches('-').to_string();
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
        Kind::Augmentation => {
            format!("--set 'augment=[{{plugin=\"{0}\"}}, {{plugin=\"{0}\"}}]'", args.name)
        }
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
pub fn generate(
    kind: Kind,
    name: &str,
    dest: &Path,
    sdk_path: Option<&Path>,
) -> Result<Vec<PathBuf>> {
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
    let sdk_str =
        sdk.to_str().with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    let subst = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{Type}}", &type_name(name))
            .replace("{{crate}}", &format!("latent-plugin-{name}"))
            .replace("{{lib}}", &format!("latent_plugin_{}", name.replace('-', "_")))
            .replace("{{kind}}", kind_str(kind))
            .replace("{{sdk}}", &toml::Value::String(sdk_str.to_string()).to_string())
            .replace("{{sdk_dir}}", sdk_str)
            .replace(
                "{{train_set}}",
                match kind {
                    Kind::Objective => "--set objective.plugin={{name}}",
                    Kind::Encoder => "--set encoder.plugin={{name}}",
                    Kind::Augmentation => {
                        "--set 'augment=[{plugin=\"{{name}}\"}, {plugin=\"{{name}}\"}]'"
                    }
                },
            )
            .replace("{{name}}", name)
    };
    let lib = match kind {
        Kind::Objective => OBJECTIVE,
        Kind::Encoder => ENCODER,
        Kind::Augmentation => AUGMENTATION,
    };
    std::fs::create_dir_all(dest.join("src"))
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut written = Vec::new();
    let mut write = |rel: &str, text: String| -> Result<()> {
        let p = dest.join(rel);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
        written.push(p);
        Ok(())
    };
    write("Cargo.toml", subst(CARGO_TOML))?;
    write("src/lib.rs", fill_source(kind, lib, name))?;
    write("README.md", subst(README))?;
    write(".gitignore", "/target\n".to_string())?;
    // The checkout's lock file pins every dependency to the versions the host was built and
    // tested with; cargo drops the entries this crate does not use.
    if let Some(lock) = sdk.parent().map(|p| p.join("Cargo.lock")).filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&lock)
            .with_context(|| format!("cannot read {}", lock.display()))?;
        write("Cargo.lock", text)?;
    }
    Ok(written)
}

/// A template's source with its placeholder plugin name (`template-objective`) and type
/// (`TemplateObjective`) replaced by `name`'s. The templates are real crates under
/// `host/templates/`, built, linted and tested with the workspace.
fn fill_source(kind: Kind, source: &str, name: &str) -> String {
    let k = kind_str(kind);
    let ty = format!("Template{}{}", k[..1].to_ascii_uppercase(), &k[1..]);
    source.replace(&format!("template-{k}"), name).replace(&ty, &type_name(name))
}

const CARGO_TOML: &str = include_str!("../../templates/Cargo.toml.in");

const README: &str = include_str!("../../templates/README.md.in");

const OBJECTIVE: &str = include_str!("../../templates/objective/src/lib.rs");

const ENCODER: &str = include_str!("../../templates/encoder/src/lib.rs");

const AUGMENTATION: &str = include_str!("../../templates/augmentation/src/lib.rs");

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
        // a near miss gets the valid spelling
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
        assert!(
            toml.contains("name = \"latent-plugin-my-enc\"") && toml.contains("[workspace]"),
            "{toml}"
        );
        let lib = std::fs::read_to_string(dest.join("src/lib.rs")).unwrap();
        assert!(
            lib.contains("pub struct MyEnc")
                && lib.contains("const NAME: &'static str = \"my-enc\";")
        );
        assert!(
            !lib.contains("{{") && !lib.to_lowercase().contains("template"),
            "every placeholder replaced"
        );
        for kind in [Kind::Objective, Kind::Augmentation] {
            let d = dir.path().join(kind_str(kind));
            generate(kind, "my-plugin", &d, None).unwrap();
            let lib = std::fs::read_to_string(d.join("src/lib.rs")).unwrap();
            assert!(
                lib.contains("pub struct MyPlugin") && !lib.to_lowercase().contains("template"),
                "{lib}"
            );
        }
        let e = generate(Kind::Encoder, "my-enc", &dest, None).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e =
            generate(Kind::Objective, "x", &dir.path().join("x"), Some(dir.path())).unwrap_err();
        assert!(e.to_string().contains("--sdk-path"), "{e}");
    }
}
