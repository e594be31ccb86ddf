//! The experiment config: TOML, unknown keys refused with their path, `--set a.b=value`
//! overrides, defaults that make `latent train` with no config run the documented default
//! experiment (SimCLR, resnet-mini, the embedded MNIST subset).

use crate::train::optim::OptimConfig;
use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `cpu`, or `cuda:N` (`cuda` is `cuda:0`): where encoders run (docs/ARCHITECTURE.md,
    /// "Devices"). A machine without that GPU refuses it, naming what is missing.
    pub device: String,
    /// Where the images come from.
    pub data: DataConfig,
    /// The backbone.
    pub encoder: PluginConfig,
    /// The loss and its heads.
    pub objective: PluginConfig,
    /// One augmentation pipeline per view.
    pub augment: Vec<PluginConfig>,
    /// Loop settings.
    pub train: TrainConfig,
    /// The optimizer and learning-rate schedule.
    pub optim: OptimConfig,
    /// Evaluation during and after training.
    pub eval: EvalConfig,
}

/// A plugin and its config (passed to the plugin as JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Plugin name, as `latent plugins` lists it.
    pub plugin: String,
    /// Its config; omitted keys take the plugin's defaults.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
}

fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl PluginConfig {
    fn new(plugin: &str, config: serde_json::Value) -> Self {
        PluginConfig { plugin: plugin.into(), config }
    }
}

/// `[data]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `embedded:mnist-5k`, `idx:DIR`, `cifar10:DIR`, `folder:DIR` or `images:DIR`.
    pub source: String,
    /// Loader threads (0: one per core).
    pub threads: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Skip undecodable images in folders (counted, with a warning) instead of failing.
    pub skip_bad_images: bool,
    /// Use only the first N training images (0: all), for quick experiments and tests.
    pub max_train_images: usize,
    /// Use only the first N test images (0: all).
    pub max_test_images: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "embedded:mnist-5k".into(),
            threads: 0,
            prefetch: 4,
            skip_bad_images: false,
            max_train_images: 0,
            max_test_images: 0,
        }
    }
}

/// `[train]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split.
    pub epochs: u64,
    /// Images per batch (each seen once per view).
    pub batch_size: usize,
    /// Stop after this many steps in all (0: no cap).
    pub max_steps: u64,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Write a checkpoint every this many steps (0: only at the end of each epoch).
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    pub keep_checkpoints: usize,
    /// Classes per batch for objectives that need labels (P of P x K batches; 0: every class of
    /// the dataset, at most batch_size / 2; K = batch_size / P).
    pub classes_per_batch: usize,
    /// A plugin call of the training step that has not returned after this many seconds ends
    /// the run with an error naming it and the last checkpoint (0: no limit). See `watchdog`.
    pub call_timeout_s: u64,
    /// Which images a batch-norm layer's training statistics span: `all_views` (the default:
    /// the views go through the encoder as one batch, as SimCLR's reference code does) or
    /// `per_view` (statistics per view, the maths of one encoder pass per view as in lightly's
    /// examples). The views still go through the encoder as one batch either way.
    pub batch_norm: BatchNormScope,
    /// In a data-parallel run (`mpirun -np N`), batch-norm statistics over the global batch
    /// (every rank's images, as PyTorch's `SyncBatchNorm`) instead of each rank's own slice
    /// (DDP's default). The host sets the encoder's `sync_batch_norm` key, so the encoder must
    /// have it (the `resnet` plugin does). Nothing changes in one process.
    pub sync_batchnorm: bool,
    /// Multi-crop (DINO): the first `global_views` views of `[[augment]]` are the global
    /// crops, which the EMA target (the teacher) sees; the others, which may be smaller, only
    /// the online encoder sees. 0 (default): every view is global.
    pub global_views: usize,
}

/// `train.batch_norm`: the images one batch-norm statistic spans during training.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormScope {
    /// Every view of the batch together (V·B images).
    #[default]
    AllViews,
    /// Each view on its own (B images): the host sets the encoder's `bn_groups` key to the
    /// number of views, so the encoder must have that key (the `resnet` plugin does).
    PerView,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 256,
            max_steps: 0,
            seed: 0,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            classes_per_batch: 0,
            call_timeout_s: 600,
            batch_norm: BatchNormScope::AllViews,
            sync_batchnorm: false,
            global_views: 0,
        }
    }
}

/// `[eval]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate on the test split every this many epochs (0: only at the end).
    pub every_epochs: u64,
    /// kNN settings reported: (k, temperature) pairs.
    #[serde(serialize_with = "shortest_f32_pairs")]
    pub knn: Vec<(usize, f32)>,
    /// Train a linear probe at the end of training.
    pub linear_probe: bool,
    /// Probe training epochs (full-batch Adam steps).
    pub probe_steps: usize,
}

/// Writes each f32 as the shortest decimal that reads back as the same f32 (`0.1`, not the
/// `0.10000000149011612` of its f64 widening), so config.toml says what the user wrote.
fn shortest_f32_pairs<S: serde::Serializer>(
    pairs: &[(usize, f32)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let wide: Vec<(usize, f64)> =
        pairs.iter().map(|&(k, t)| (k, t.to_string().parse().unwrap_or(t as f64))).collect();
    wide.serialize(s)
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every_epochs: 2,
            knn: vec![(200, 0.1), (20, 0.07)],
            linear_probe: true,
            probe_steps: 300,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: "cpu".into(),
            data: DataConfig::default(),
            encoder: PluginConfig::new("resnet", serde_json::json!({"preset": "resnet-mini"})),
            // the benchmark spec's head (128-256-128) and the `grey` preset, chosen for the
            // embedded digits by measurement (bench/recipes, bench/README.md)
            objective: PluginConfig::new(
                "simclr",
                serde_json::json!({"temperature": 0.5, "hidden_dim": 256}),
            ),
            augment: vec![
                PluginConfig::new("pipeline", serde_json::json!({"preset": "grey"})),
                PluginConfig::new("pipeline", serde_json::json!({"preset": "grey"})),
            ],
            train: TrainConfig::default(),
            optim: OptimConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// A TOML error as "line L, column C: message" with at most 120 characters of the line (the
/// parser's own message quotes the whole line, 400 KB of it for a pathological file).
fn toml_error(e: &toml::de::Error, text: &str, origin: &str) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("config {origin} is not valid TOML: {}", e.message());
    };
    let at = span.start.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let (line, col) =
        (text[..at].matches('\n').count() + 1, text[line_start..at].chars().count() + 1);
    let excerpt: String =
        text[line_start..].lines().next().unwrap_or("").chars().take(120).collect();
    let more = if text[line_start..].lines().next().is_some_and(|l| l.chars().count() > 120) {
        " …"
    } else {
        ""
    };
    anyhow::anyhow!(
        "config {origin} is not valid TOML at line {line}, column {col}: {}\n  {excerpt}{more}",
        e.message()
    )
}

/// Parses `--set` values: TOML literals (`0.1`, `true`, `[1, 2]`, `"x"`), else a plain string.
fn parse_value(s: &str) -> toml::Value {
    let doc = format!("v = {s}");
    match doc.parse::<toml::Table>() {
        // `nan` / `inf` stay words (`fault=nan`): a plugin config is JSON, which has no such number.
        Ok(mut t) => match t.remove("v") {
            Some(toml::Value::Float(f)) if !f.is_finite() => toml::Value::String(s.to_string()),
            v => v.unwrap_or(toml::Value::String(s.into())),
        },
        Err(_) => toml::Value::String(s.to_string()),
    }
}

/// The path (`.a[2].b`) of the first null inside `v`.
fn find_null(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => Some(String::new()),
        serde_json::Value::Array(a) => {
            a.iter().enumerate().find_map(|(i, x)| find_null(x).map(|p| format!("[{i}]{p}")))
        }
        serde_json::Value::Object(o) => {
            o.iter().find_map(|(k, x)| find_null(x).map(|p| format!(".{k}{p}")))
        }
        _ => None,
    }
}

/// Applies `a.b.c=value` to a TOML table, creating tables on the way.
pub fn apply_override(root: &mut toml::Table, spec: &str) -> Result<()> {
    let (path, value) =
        spec.split_once('=').with_context(|| format!("--set {spec:?}: expected key=value"))?;
    let digits = value.trim().strip_prefix(['-', '+']).unwrap_or(value.trim()).replace('_', "");
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && value.trim().replace('_', "").parse::<i64>().is_err()
    {
        bail!(
            "--set {spec:?}: {} is outside the integers a config holds (TOML's, -2^63 to 2^63 - 1)",
            value.trim()
        );
    }
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {spec:?}: empty key in {path:?}");
    }
    let mut table = root;
    for k in &keys[..keys.len() - 1] {
        let entry =
            table.entry(k.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {spec:?}: {k} is not a table"),
        };
    }
    table.insert(keys[keys.len() - 1].to_string(), parse_value(value.trim()));
    Ok(())
}

/// Lays `over` onto `base`, table by table. A plugin section (`encoder`, `objective`) that
/// names another plugin than the default replaces the default section whole, so the default
/// plugin's config keys do not leak into another plugin; arrays (`augment`) replace whole.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                let other_plugin =
                    matches!((b.get("plugin"), o.get("plugin")), (Some(x), Some(y)) if x != y);
                if other_plugin {
                    *b = o;
                } else {
                    merge(b, o);
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Reads `file` (or the defaults when `None`), applies `overrides`, checks everything.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config> {
        let (mut table, origin) = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read config {}", f.display()))?;
                let t: toml::Table = toml::from_str(&text)
                    .map_err(|e| toml_error(&e, &text, &f.display().to_string()))?;
                (t, f.display().to_string())
            }
            None => (toml::Table::new(), "the default config".to_string()),
        };
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        Self::from_table(table).with_context(|| format!("in {origin}"))
    }

    /// Builds a config from a parsed TOML table laid over the defaults, naming the path of any
    /// unknown or bad key.
    pub fn from_table(table: toml::Table) -> Result<Config> {
        let mut base: toml::Table = toml::from_str(&Config::default().to_toml()?)?;
        // serde would read `objective = ["simclr"]` as a section, which config.toml then writes
        // back as a table that merges differently (another config on --resume): sections are tables.
        for (k, v) in &table {
            if base.get(k).is_some_and(toml::Value::is_table) && !v.is_table() {
                bail!("key `{k}`: expected a table ([{k}] ...), got {} {v}", v.type_str());
            }
        }
        merge(&mut base, table);
        let de = toml::Value::Table(base);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("key `{path}`: {}", e.into_inner())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<()> {
        // TOML has no null: a null in a plugin config was a nan or inf, which JSON cannot carry.
        let plugins =
            [("encoder".to_string(), &self.encoder), ("objective".to_string(), &self.objective)];
        for (key, pc) in plugins
            .into_iter()
            .chain(self.augment.iter().enumerate().map(|(i, a)| (format!("augment[{i}]"), a)))
        {
            if let Some(at) = find_null(&pc.config) {
                bail!("key `{key}.config{at}`: nan and inf cannot be passed to a plugin (its config crosses as JSON)");
            }
        }
        if let Err(e) = latent_cuda::parse_device(&self.device) {
            bail!("config key `device`: {e}");
        }
        if self.augment.is_empty() {
            bail!("augment: give at least one view ([[augment]] plugin = \"pipeline\")");
        }
        if self.train.global_views > self.augment.len() {
            bail!(
                "train.global_views is {}, but [[augment]] gives {} views",
                self.train.global_views,
                self.augment.len()
            );
        }
        if self.train.batch_size < 2 {
            bail!("train.batch_size must be at least 2, got {}", self.train.batch_size);
        }
        if self.train.epochs == 0 && self.train.max_steps == 0 {
            bail!("train.epochs is 0 and train.max_steps is 0: nothing to train");
        }
        if self.train.keep_checkpoints == 0 {
            bail!("train.keep_checkpoints must be at least 1");
        }
        // sizes that allocate up front: bounded, so a typo is an error and not an abort
        for (key, v, max) in [
            ("data.prefetch", self.data.prefetch, 1024),
            ("data.threads", self.data.threads, 1024),
            ("train.batch_size", self.train.batch_size, 1 << 20),
        ] {
            if v > max {
                bail!("{key} is {v}; at most {max} is allowed");
            }
        }
        for (k, t) in &self.eval.knn {
            if *k == 0 || *t <= 0.0 {
                bail!("eval.knn: k must be > 0 and the temperature > 0, got ({k}, {t})");
            }
        }
        self.optim.validate()
    }

    /// The config as TOML text (saved in the run directory).
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_simclr_mnist_is_the_default_experiment_written_out() {
        // README: "`latent train` with no config runs the default experiment" = simclr-mnist.toml
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/configs/simclr-mnist.toml");
        assert_eq!(Config::load(Some(&file), &[]).unwrap(), Config::default());
        assert_eq!(Config::default().augment[0].config, serde_json::json!({"preset": "grey"}));
    }

    #[test]
    fn default_config_roundtrips_through_toml() {
        let c = Config::default();
        let text = c.to_toml().unwrap();
        let back = Config::from_table(text.parse().unwrap()).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn an_integer_beyond_toml_is_named_as_such_not_as_a_string() {
        // regression: train.seed=18446744073709551615 was reported as a "string"
        let e = format!(
            "{:#}",
            Config::load(None, &["train.seed=18446744073709551615".into()]).unwrap_err()
        );
        assert!(e.contains("outside the integers"), "{e}");
        assert_eq!(
            Config::load(None, &["train.seed=9223372036854775807".into()]).unwrap().train.seed,
            i64::MAX as u64
        );
    }

    #[test]
    fn a_toml_error_quotes_at_most_a_short_excerpt() {
        // regression: a 400 KB line was echoed whole
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, format!("[train]\nepochs = [{}", "1, ".repeat(100_000))).unwrap();
        let e = format!("{:#}", Config::load(Some(&f), &[]).unwrap_err());
        assert!(
            e.len() < 600 && e.contains("line 2"),
            "{} chars: {}",
            e.len(),
            &e[..e.len().min(600)]
        );
    }

    #[test]
    fn sizes_that_allocate_up_front_are_bounded() {
        // regression: data.prefetch = 1000000000 aborted in the loader's queue allocation
        let mut c = Config::default();
        c.data.prefetch = 1_000_000_000;
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("data.prefetch is 1000000000"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = Config::from_table("[train]\nepochz = 3".parse().unwrap()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("train.epochz") && msg.contains("unknown field"), "{msg}");
        let e = Config::from_table("[optim]\nlr = \"fast\"".parse().unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("optim.lr"), "{e:#}");
        // an unknown optimizer used to mean LARS silently; now the key and the choices are named
        let e = format!("{:#}", Config::load(None, &["optim.name=\"adam\"".into()]).unwrap_err());
        assert!(e.contains("optim.name") && e.contains("`sgd`, `adamw`, `lars`"), "{e}");
    }

    #[test]
    fn set_overrides_create_and_replace_values() {
        let c = Config::load(
            None,
            &[
                "train.epochs=2".into(),
                "objective.config.temperature=0.1".into(),
                "data.source=idx:/tmp/x".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.epochs, 2);
        assert_eq!(c.objective.config["temperature"], serde_json::json!(0.1));
        assert_eq!(c.data.source, "idx:/tmp/x");
        assert_eq!(
            c.encoder.config["preset"],
            serde_json::json!("resnet-mini"),
            "defaults kept beside the override"
        );
        let c = Config::load(None, &["objective.plugin=byol".into()]).unwrap();
        assert_eq!(
            c.objective.config,
            serde_json::json!({}),
            "another plugin does not inherit simclr's keys"
        );
        let e = Config::load(None, &["train.epochs".into()]).unwrap_err();
        assert!(e.to_string().contains("key=value"));
    }

    #[test]
    fn bad_values_are_refused() {
        let e = Config::load(None, &["device=\"gpu\"".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("config key `device`"), "{e:#}");
        // a CUDA device parses; opening it is the run's business (device::open)
        Config::load(None, &["device=\"cuda:1\"".into()]).unwrap();
        let e = Config::load(None, &["train.batch_size=1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("train.batch_size"));
    }
}
