//! `latent train`: the training run end to end.
//!
//! A run directory holds `config.toml` (the resolved config), `metrics.jsonl`, `checkpoints/`,
//! `eval.json`, and the plots `loss.png` and `eval.png`. The run is a pure function of the
//! config's seed and the step: data order, augmentation seeds and the schedule derive from
//! (seed, epoch, batch), so `--resume` continues with exactly the batches, learning rates and
//! optimizer state an uninterrupted run would have used.
//!
//! Faults: a plugin error, a non-finite loss or gradient stops the run with an error naming the
//! step and the plugin; the last checkpoint written stays the latest. Ctrl-C finishes the
//! current step, writes a checkpoint and exits with code 130 and the command to resume.

use crate::checkpoint::{self, Checkpoint, Store, TrainState};
use crate::config::Config;
use crate::data::{self, Dataset};
use crate::learner::Learner;
use crate::metrics::MetricsLog;
use crate::optim::Schedule;
use crate::plugins::{Augment, Registry};
use crate::report;
use anyhow::{bail, Context as _, Result};
use latent_abi::Context;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Options of `latent train`.
#[derive(Debug, Clone, Default)]
pub struct TrainArgs {
    /// The config file (none: the default experiment).
    pub config: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub sets: Vec<String>,
    /// Run directory.
    pub out: Option<PathBuf>,
    /// Continue the run in `out` from its latest checkpoint.
    pub resume: bool,
    /// Stop (with a checkpoint, as Ctrl-C would) once this many steps are done.
    pub stop_after: Option<u64>,
    /// Extra plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
}

/// The config keys `--resume --set` may change: the run's length.
pub const LENGTH_KEYS: [&str; 2] = ["train.epochs", "train.max_steps"];

/// The first of SIGINT, SIGTERM or SIGHUP received (0: none yet).
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "interrupt (SIGINT)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// One path for Ctrl-C and what schedulers send (Slurm and Kubernetes: SIGTERM; a closed
/// terminal: SIGHUP): the current step finishes, a checkpoint is written and the process exits
/// with 128 + the signal's number. A second signal (of any of the three) exits at once, without a
/// checkpoint.
fn install_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        tracing::warn!("cannot install the signal handlers: Ctrl-C and SIGTERM will stop the run without a checkpoint");
        return;
    };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                eprintln!("\n{} again: exiting without a checkpoint", signal_name(sig));
                std::process::exit(128 + sig);
            }
            eprintln!("\n{}: finishing the current step and writing a checkpoint (send it again to quit at once)", signal_name(sig));
        }
    });
}

/// SHA-256 of the config's TOML text.
pub fn config_hash(cfg: &Config) -> Result<String> {
    Ok(text_hash(&cfg.to_toml()?))
}

fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn default_out(cfg: &Config) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("{}-{}-{secs}", cfg.objective.plugin, cfg.encoder.plugin))
}

/// The file that marks a directory as a latent run (written before anything else in it).
pub const RUN_MARKER: &str = ".latent-run";

/// An advisory lock on a run directory (`RUN/.lock`, `flock`), held while the run lives.
pub struct RunLock {
    _file: std::fs::File,
}

/// Locks `out` for this process, or names the process that holds it.
pub fn lock_run(out: &Path) -> Result<RunLock> {
    use std::io::{Read, Seek, Write};
    let path = out.join(".lock");
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)
        .with_context(|| format!("cannot open the run lock {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid open file descriptor; flock only takes the advisory lock.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            bail!(
                "{} is in use by another latent process{}; wait for it to finish or stop it first",
                out.display(),
                if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
            );
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    f.sync_all()?;
    Ok(RunLock { _file: f })
}

/// Creates the run directory, proves it writable, marks and locks it, before any training.
///
/// A new run (`resume` false) goes into a directory that does not exist, is empty, or holds an
/// earlier attempt of latent that left no checkpoint (its records are cleared). A directory
/// with other files, or with a run that has checkpoints, is refused before anything in it is
/// touched. `--resume` needs a run directory (the marker, or the config.toml and checkpoints of
/// a run from before the marker existed).
fn prepare_out(out: &Path, resume: bool) -> Result<RunLock> {
    let existed = out.exists();
    if existed && !out.is_dir() {
        bail!("cannot create the run directory {}: it is a file", out.display());
    }
    let entries: Vec<String> = if existed {
        std::fs::read_dir(out)
            .with_context(|| format!("cannot list the run directory {}", out.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    } else {
        vec![]
    };
    let has = |n: &str| entries.iter().any(|e| e == n);
    let is_run = has(RUN_MARKER) || (has("config.toml") && has("checkpoints"));
    if !entries.is_empty() && !is_run {
        bail!(
            "{} is not empty and is not a latent run directory (no {RUN_MARKER}); choose a new or empty --out",
            out.display()
        );
    }
    if resume && !is_run {
        bail!("{}: no run to resume (no {RUN_MARKER}, config.toml or checkpoints there)", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create the run directory {}", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("the run directory {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);
    let ck = out.join("checkpoints");
    if ck.exists() && !ck.is_dir() {
        bail!("{} is not a directory: checkpoints cannot be written there", ck.display());
    }
    let lock = lock_run(out)?;
    if !resume && Store::new(out, 1).latest().is_some() {
        bail!(
            "{} already holds a run with checkpoints; continue it with `latent train --resume --out {}` or choose another --out",
            out.display(),
            out.display()
        );
    }
    if !resume && is_run {
        // an earlier attempt that failed before its first checkpoint: start clean
        for f in ["metrics.jsonl", "eval.json", "loss.png", "eval.png", "collapse.png", "config.toml"] {
            let _ = std::fs::remove_file(out.join(f));
        }
        tracing::warn!("{}: the earlier attempt there left no checkpoint; starting the run afresh", out.display());
    }
    checkpoint::write_atomic(&out.join(RUN_MARKER), format!("latent run directory, ABI {}\n", latent_abi::ABI_VERSION).as_bytes())?;
    Ok(lock)
}

/// Opens the dataset of `cfg.data`, applying its size limits.
pub fn open_data(cfg: &Config) -> Result<data::Splits> {
    let mut splits = data::open_with(&cfg.data.source, &data::OpenOptions { skip_bad: cfg.data.skip_bad_images })
        .with_context(|| format!("config key `data.source` ({})", cfg.data.source))?;
    splits.train.truncate(cfg.data.max_train_images);
    if let Some(t) = &mut splits.test {
        t.truncate(cfg.data.max_test_images);
    }
    Ok(splits)
}

/// Drops the `metrics.jsonl` records of steps after `step` (logged before a fault or a kill,
/// and done again on resume) and any torn line, so that each step is logged once. With
/// `mid_epoch` (the checkpoint was taken inside an epoch, whose end will run again), the
/// epoch and eval records of `step` itself go too.
fn drop_metrics_after(out: &Path, step: u64, mid_epoch: bool) -> Result<()> {
    let path = out.join("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let keep: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|r| {
                let s = r.get("step").and_then(Value::as_u64);
                let is_step = r.get("kind").and_then(Value::as_str) == Some("step");
                s.map_or(true, |s| s < step || (s == step && (is_step || !mid_epoch)))
            })
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if keep != text {
        checkpoint::write_atomic(&path, keep.as_bytes()).with_context(|| format!("cannot rewrite {}", path.display()))?;
    }
    Ok(())
}

/// The dotted keys whose values differ between two config TOML texts (at most 10).
fn config_diff(a: &str, b: &str) -> Vec<String> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| flat(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)),
            v => {
                out.insert(prefix.to_string(), v.to_string());
            }
        }
    }
    let (mut fa, mut fb) = (Default::default(), Default::default());
    let (Ok(ta), Ok(tb)) = (a.parse::<toml::Table>(), b.parse::<toml::Table>()) else { return vec![] };
    flat("", &toml::Value::Table(ta), &mut fa);
    flat("", &toml::Value::Table(tb), &mut fb);
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter().filter(|k| fa.get(*k) != fb.get(*k)).take(10).cloned().collect()
}

/// Σ and count of the `loss` of the step records of `epoch` up to `step` in metrics.jsonl.
fn epoch_losses(out: &Path, epoch: u64, step: u64) -> (f64, u64) {
    let recs = crate::metrics::read(&out.join("metrics.jsonl")).unwrap_or_default();
    recs.iter()
        .filter(|r| r["kind"] == "step" && r["epoch"].as_u64() == Some(epoch) && r["step"].as_u64().is_some_and(|s| s <= step))
        .filter_map(|r| r["loss"].as_f64())
        .fold((0.0, 0), |(s, n), l| (s + l, n + 1))
}

/// Loads the augmentation pipeline of every view.
pub fn build_views(reg: &Registry, cfg: &Config) -> Result<Vec<Augment>> {
    let ctx = Context { seed: cfg.train.seed, ..Default::default() };
    cfg.augment.iter().enumerate().map(|(i, a)| reg.augmentation(&a.plugin, &a.config, &ctx).with_context(|| format!("config key `augment[{i}]`"))).collect()
}

/// A warning when a view's recipe does not fit the data: the `grey` preset (made for small grey
/// images, no hue, saturation or grayscale) on colour images.
pub fn recipe_warning(cfg: &Config, shape: [usize; 3]) -> Option<String> {
    let grey: Vec<String> = cfg
        .augment
        .iter()
        .enumerate()
        .filter(|(_, a)| a.plugin == "pipeline" && a.config.get("ops").is_none() && a.config.get("preset").and_then(Value::as_str) == Some("grey"))
        .map(|(i, _)| format!("augment[{i}]"))
        .collect();
    (shape[0] == 3 && !grey.is_empty()).then(|| {
        format!(
            "{} use the `grey` preset, made for small grey images, but {} has colour images ({shape:?}); \
             for natural images use preset = \"simclr\" (examples/configs/simclr-cifar10.toml)",
            grey.join(", "),
            cfg.data.source
        )
    })
}

/// The image shape after augmentation (every view must agree).
pub fn view_shape(views: &[Augment], shape: [usize; 3]) -> Result<[usize; 3]> {
    let mut out = None;
    for (i, v) in views.iter().enumerate() {
        let s = v.output_shape(shape)?;
        match out {
            None => out = Some(s),
            Some(o) if o != s => bail!("augment[{i}] gives images of shape {s:?} but augment[0] gives {o:?}: give every view the same size"),
            _ => {}
        }
    }
    out.context("no views")
}

/// The loader settings of a run (epoch 0): batch size, seed, threads, and the sampler (P
/// classes × K images for an objective that needs labels, else a seeded shuffle).
pub fn loader_config(cfg: &Config, train: &data::Dataset, needs_labels: bool) -> Result<data::loader::LoaderConfig> {
    let bs = cfg.train.batch_size;
    let sampler = if needs_labels {
        // P classes x K images: P from the config, else every class (at most bs / 2).
        let classes = train.classes.len().max(1);
        let p = if cfg.train.classes_per_batch > 0 { cfg.train.classes_per_batch } else { classes.min(bs / 2).max(1) };
        if p > classes {
            bail!("train.classes_per_batch is {p} but {} has {classes} classes", train.name);
        }
        data::loader::Sampler::ClassBalanced { classes: p, per_class: (bs / p).max(1) }
    } else {
        data::loader::Sampler::Shuffle
    };
    Ok(data::loader::LoaderConfig {
        batch_size: bs,
        seed: cfg.train.seed,
        epoch: 0,
        threads: cfg.data.threads,
        prefetch: cfg.data.prefetch.max(1),
        drop_last: true,
        sampler,
    })
}

/// Runs `latent train`; returns the exit code (0, or 128 + the signal when stopped by one).
pub fn run(args: TrainArgs) -> Result<i32> {
    // `previous`: the run's config before `--resume --set train.epochs=N` lengthened it
    let (cfg, out, previous) = if args.resume {
        let out = args.out.clone().context("--resume needs --out RUN_DIR (the run to continue)")?;
        if !out.join(RUN_MARKER).exists() && !out.join("config.toml").exists() {
            bail!("{}: no run to resume: not a latent run directory (no {RUN_MARKER} or config.toml)", out.display());
        }
        let cfg = Config::load(Some(&out.join("config.toml")), &[]).context("reading the run's config.toml")?;
        if args.config.is_some() {
            let asked = Config::load(args.config.as_deref(), &args.sets)?;
            if asked != cfg {
                bail!("--resume continues {} with its own config.toml; the config given differs (remove CONFIG and --set, or start a new run)", out.display());
            }
            (cfg, out, None)
        } else if !args.sets.is_empty() {
            // Extending a run: only its length may change (train.epochs, train.max_steps).
            let asked = Config::load(Some(&out.join("config.toml")), &args.sets)?;
            let changed = config_diff(&cfg.to_toml()?, &asked.to_toml()?);
            let other: Vec<String> = changed.into_iter().filter(|k| !LENGTH_KEYS.contains(&k.as_str())).map(|k| format!("`{k}`")).collect();
            if !other.is_empty() {
                bail!(
                    "--resume can change only the run's length ({}); {} would change too: start a new run for that",
                    LENGTH_KEYS.join(", "),
                    other.join(", ")
                );
            }
            let previous = (asked != cfg).then_some(cfg);
            (asked, out, previous)
        } else {
            (cfg, out, None)
        }
    } else {
        let cfg = Config::load(args.config.as_deref(), &args.sets)?;
        let out = args.out.clone().unwrap_or_else(|| default_out(&cfg));
        (cfg, out, None)
    };
    let _lock = prepare_out(&out, args.resume)?;
    let config_text = cfg.to_toml()?;
    if !args.resume {
        checkpoint::write_atomic(&out.join("config.toml"), config_text.as_bytes())?;
    }
    let hash = text_hash(&config_text);
    install_signals();
    // Plugin calls of this thread that never return end the run (train.call_timeout_s).
    let _watchdog = crate::watchdog::arm(cfg.train.call_timeout_s, &out);

    let reg = Registry::discover(&args.plugin_dirs)?;
    let splits = open_data(&cfg)?;
    let train = Arc::new(splits.train);
    let views = build_views(&reg, &cfg)?;
    let shape = view_shape(&views, train.shape)?;
    if let Some(w) = recipe_warning(&cfg, train.shape) {
        tracing::warn!("{w}");
    }
    let mut learner = Learner::build(&reg, &cfg, shape)?;

    let needs_labels = learner.objective.manifest.needs_labels;
    if needs_labels && train.labels.is_empty() {
        bail!("objective '{}' needs labels, but {} has none", cfg.objective.plugin, cfg.data.source);
    }
    let bs = cfg.train.batch_size;
    let base_loader = loader_config(&cfg, &train, needs_labels)?;
    let loader_cfg = |epoch: u64| data::loader::LoaderConfig { epoch, ..base_loader.clone() };
    let steps_per_epoch = data::loader::epoch_batches(&train, &loader_cfg(0)).with_context(|| format!("config key `train.batch_size` ({bs})"))?.len() as u64;
    let mut total = steps_per_epoch * cfg.train.epochs;
    if cfg.train.max_steps > 0 {
        total = if total == 0 { cfg.train.max_steps } else { total.min(cfg.train.max_steps) };
    }
    let sched = Schedule::new(&cfg.optim, bs, total, steps_per_epoch);
    let store = Store::new(&out, cfg.train.keep_checkpoints);

    let (mut step, mut epoch, mut batch0) = (0u64, 0u64, 0u64);
    if args.resume {
        let ck = checkpoint::load(&out)?;
        // an extension (`--resume --set train.epochs=N`): the checkpoint's config is the run's
        // config.toml before the change; the new one is written once the checkpoint matches it
        let check_hash = match &previous {
            Some(p) => config_hash(p)?,
            None => hash.clone(),
        };
        if previous.is_some() && ck.state.config_hash == check_hash {
            checkpoint::write_atomic(&out.join("config.toml"), config_text.as_bytes())?;
            let (a, b) = (sched.lr(ck.state.step), ck.state.total_steps);
            eprintln!(
                "extending {}: {b} steps planned, now {total}. The learning-rate schedule (and any schedule of the objective, such as BYOL's τ) is recomputed over {total} steps: at step {} the rate is {a:.4} (warm-up and cosine decay stretched to the new length).",
                out.display(),
                ck.state.step
            );
        }
        if ck.state.config_hash != check_hash {
            let keys: Vec<String> = ck.state.config.as_deref().map(|old| config_diff(old, &config_text)).unwrap_or_default().iter().map(|k| format!("`{k}`")).collect();
            let which = if keys.is_empty() { String::new() } else { format!(": {} differ{}", keys.join(", "), if keys.len() == 1 { "s" } else { "" }) };
            bail!(
                "the checkpoint in {} was written with another config than {}/config.toml{which} (hash {} vs {hash}); undo the change, or start a new run",
                out.display(),
                out.display(),
                ck.state.config_hash
            );
        }
        learner.load_state(&ck.tensors, ck.state.optim_t)?;
        (step, epoch, batch0) = (ck.state.step, ck.state.epoch, ck.state.batch_in_epoch);
        // the checkpoint at the end of a run keeps the last epoch's number; a run extended from
        // there goes on with the next epoch's data order
        if batch0 == 0 && steps_per_epoch > 0 && step >= (epoch + 1) * steps_per_epoch {
            epoch = step / steps_per_epoch;
        }
        drop_metrics_after(&out, step, batch0 > 0)?;
        tracing::info!("resuming {} at step {step} (epoch {epoch}, batch {batch0})", out.display());
    }
    tracing::info!(
        "training {} + {} on {} ({} images, {:?}) for {total} steps of {bs}; run directory {}",
        cfg.objective.plugin,
        cfg.encoder.plugin,
        train.name,
        train.len(),
        train.shape,
        out.display()
    );

    let mut log = MetricsLog::open(&out)?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(step);
    let mut last_loss = None;
    let save = |learner: &mut Learner, step: u64, epoch: u64, b: u64, last_loss: Option<f32>| -> Result<PathBuf> {
        let state = TrainState {
            step,
            epoch,
            batch_in_epoch: b,
            total_steps: total,
            seed: cfg.train.seed,
            optim_t: learner.optim.t,
            config_hash: hash.clone(),
            abi_version: latent_abi::ABI_VERSION.into(),
            last_loss,
            config: Some(config_text.clone()),
        };
        store.save(&Checkpoint { tensors: learner.state_tensors()?, state })
    };
    let test = splits.test.as_ref();
    if test.is_none() {
        tracing::info!("{} has no test split: the collapse monitor uses training images and there is no kNN evaluation", cfg.data.source);
    }
    // resumed inside an epoch: its mean loss counts the steps logged before the stop too
    let mut resumed_loss = if batch0 > 0 { epoch_losses(&out, epoch, step) } else { (0.0, 0) };
    while step < total {
        let mut epoch_loss = std::mem::take(&mut resumed_loss);
        let mut alarms_told = std::collections::BTreeSet::new();
        let t_epoch = Instant::now();
        let mut t_last = Instant::now();
        let mut b = batch0;
        let info = latent_abi::EpochInfo { epoch, epochs: cfg.train.epochs, steps_per_epoch };
        learner.objective.begin_epoch(info).with_context(|| format!("starting epoch {epoch}"))?;
        // Resuming mid-epoch rebuilds the epoch's plan and skips the batches already done.
        let loader = data::Loader::new(train.clone(), views.clone(), &loader_cfg(epoch))?;
        for batch in loader.skip(batch0 as usize) {
            if step >= total {
                break;
            }
            let batch = batch.with_context(|| format!("loading batch {b} of epoch {epoch}"))?;
            let lr = sched.lr(step);
            crate::watchdog::set_step(step);
            let res = learner.step(&batch.views, &batch.labels, step, total, lr).with_context(|| {
                let keep = store.latest().map(|p| p.display().to_string()).unwrap_or_else(|| "none yet".into());
                format!("training stopped at step {step} (epoch {epoch}); the last good checkpoint is {keep}")
            })?;
            step += 1;
            b += 1;
            let dt = t_last.elapsed().as_secs_f64();
            t_last = Instant::now();
            let n_img = batch.views[0].shape[0];
            epoch_loss.0 += res.loss as f64;
            epoch_loss.1 += 1;
            last_loss = Some(res.loss);
            let mut f = Map::new();
            f.insert("step".into(), json!(step));
            f.insert("epoch".into(), json!(epoch));
            f.insert("loss".into(), json!(res.loss));
            f.insert("lr".into(), json!(lr));
            f.insert("tau".into(), json!(res.tau));
            f.insert("images_per_s".into(), json!(n_img as f64 / dt));
            f.insert("views_per_s".into(), json!((n_img * batch.views.len()) as f64 / dt));
            for (k, v) in &res.metrics {
                f.insert(k.clone(), json!(v));
                // an objective raises `alarm_<what>` (DINO: `alarm_uniform`); warn once an epoch
                if k.starts_with("alarm_") && *v != 0.0 && alarms_told.insert(k.clone()) {
                    tracing::warn!(
                        "objective '{}' raised `{k}` at step {step} (epoch {epoch}); the plugin's documentation says what it means. The run goes on",
                        cfg.objective.plugin
                    );
                }
            }
            log.write("step", f)?;
            bar.set_position(step);
            bar.set_message(format!("loss {:.4}  {:.0} img/s", res.loss, n_img as f64 / dt));
            if cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0 {
                // metrics.jsonl holds every step up to the checkpoint, whatever ends the process later
                log.flush()?;
                save(&mut learner, step, epoch, b, last_loss)?;
            }
            let stop = args.stop_after.is_some_and(|s| step >= s);
            let signal = SIGNAL.load(Ordering::SeqCst);
            if signal != 0 || stop {
                log.flush()?;
                bar.abandon();
                let p = save(&mut learner, step, epoch, b, last_loss)?;
                eprintln!("stopped at step {step}; checkpoint {}", p.display());
                eprintln!("resume with: latent train --resume --out {}", out.display());
                return Ok(if signal == 0 { 0 } else { 128 + signal });
            }
        }
        // epoch finished (or the step budget ran out inside it)
        let finished_epoch = step % steps_per_epoch.max(1) == 0 || step >= total;
        let mut f = Map::new();
        f.insert("epoch".into(), json!(epoch));
        f.insert("step".into(), json!(step));
        f.insert("loss".into(), json!(epoch_loss.0 / epoch_loss.1.max(1) as f64));
        f.insert("seconds".into(), json!(t_epoch.elapsed().as_secs_f64()));
        log.write("epoch", f)?;
        tracing::info!("epoch {epoch}: mean loss {:.4} ({:.1} s)", epoch_loss.0 / epoch_loss.1.max(1) as f64, t_epoch.elapsed().as_secs_f64());
        let next_epoch = if finished_epoch && step < total { epoch + 1 } else { epoch };
        if step < total {
            let knn = cfg.eval.every_epochs > 0 && (epoch + 1) % cfg.eval.every_epochs == 0;
            online_eval(&mut learner, &cfg, &train, test, epoch, step, knn, None, &mut log)?;
        }
        log.flush()?; // before the checkpoint, as above
        if let Err(e) = crate::inspect::plots::write(&out) {
            tracing::warn!("the plots were not redrawn: {e:#}");
        }
        // the step budget ran out inside an epoch: record how far into it, so that a run
        // extended from here (`--resume --set train.max_steps=N`) continues that epoch's plan
        let (save_epoch, save_batch) = if step % steps_per_epoch.max(1) == 0 { (next_epoch, 0) } else { (epoch, b) };
        save(&mut learner, step, save_epoch, save_batch, last_loss)?;
        epoch = next_epoch;
        batch0 = 0;
    }
    bar.finish_and_clear();

    // final evaluation
    let mut summary = String::new();
    if let Some(test) = test {
        if !train.labels.is_empty() {
            let method = format!("{} ({})", cfg.objective.plugin, cfg.encoder.plugin);
            let rep = report::full(&reg, &cfg, &mut learner.encoder, &method, &train, test)?;
            // the last point of eval.png is the report's own row, not computed a second time
            online_eval(&mut learner, &cfg, &train, Some(test), epoch, step, false, rep.rows.first(), &mut log)?;
            checkpoint::write_atomic(&out.join("eval.json"), serde_json::to_string_pretty(&rep)?.as_bytes())?;
            summary = rep.table();
        }
    }
    log.flush()?;
    crate::inspect::plots::write(&out)?;
    println!("run directory: {}", out.display());
    if !summary.is_empty() {
        println!("{summary}");
    }
    Ok(0)
}

/// The collapse monitor (every epoch: embedding std·√d and effective rank on the test split,
/// or on up to 1,000 training images without one) and, when `knn`, kNN accuracy (and the
/// probe) on the test split with the training split as memory bank, or the figures of `known`
/// (the final report's row); logged as an `eval` record.
#[allow(clippy::too_many_arguments)]
fn online_eval(
    learner: &mut Learner,
    cfg: &Config,
    train: &Dataset,
    test: Option<&Dataset>,
    epoch: u64,
    step: u64,
    knn: bool,
    known: Option<&report::Row>,
    log: &mut MetricsLog,
) -> Result<()> {
    let probe_set = match test {
        Some(t) => t.clone(),
        None => {
            let mut t = train.clone();
            t.truncate(1000);
            t
        }
    };
    let (te, d) = report::features(&mut learner.encoder, &probe_set)?;
    let mut f = Map::new();
    f.insert("epoch".into(), json!(epoch));
    f.insert("step".into(), json!(step));
    let std = crate::eval::collapse_std(&te, d);
    let rank = crate::eval::effective_rank(&te, d);
    f.insert("collapse_std".into(), json!(std));
    f.insert("effective_rank".into(), json!(rank));
    f.insert("dim".into(), json!(d));
    let mut line = format!("after epoch {epoch}: embedding std·√d {std:.3}, effective rank {rank:.1} (of {d})");
    if let Some(row) = known {
        for &(k, _, acc) in &row.knn {
            f.insert(format!("knn_{k}"), json!(acc));
            line += &format!("; kNN@{k} {:.2}%", acc * 100.0);
        }
        if let Some(acc) = row.linear_probe {
            f.insert("probe".into(), json!(acc));
            line += &format!("; linear probe {:.2}%", acc * 100.0);
        }
    } else if let (true, Some(test)) = (knn, test) {
        if !train.labels.is_empty() && !test.labels.is_empty() {
            let (tr, _) = report::features(&mut learner.encoder, train)?;
            let classes = report::num_classes(train, test);
            for &(k, t) in &cfg.eval.knn {
                let acc = crate::eval::knn_accuracy(&tr, &train.labels, &te, &test.labels, d, k, t, classes);
                f.insert(format!("knn_{k}"), json!(acc));
                line += &format!("; kNN@{k} {:.2}%", acc * 100.0);
            }
            if cfg.eval.linear_probe {
                let acc = crate::eval::linear_probe(&tr, &train.labels, &te, &test.labels, d, classes, cfg.eval.probe_steps);
                f.insert("probe".into(), json!(acc));
                line += &format!("; linear probe {:.2}%", acc * 100.0);
            }
        }
    }
    tracing::info!("{line}");
    log.write("eval", f)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grey_preset_on_colour_images_is_named_in_a_warning() {
        let mut cfg = Config::default();
        assert_eq!(recipe_warning(&cfg, [1, 28, 28]), None, "the default: grey preset, grey digits");
        cfg.data.source = "cifar10:data/cifar".into();
        let w = recipe_warning(&cfg, [3, 32, 32]).expect("a warning");
        assert!(w.starts_with("augment[0], augment[1] use the `grey` preset") && w.contains("cifar10:data/cifar") && w.contains("simclr"), "{w}");
        cfg.augment[0].config = serde_json::json!({"preset": "simclr"});
        cfg.augment[1].config = serde_json::json!({"preset": "grey", "ops": [{"op": "flip"}]});
        assert_eq!(recipe_warning(&cfg, [3, 32, 32]), None, "explicit ops replace the preset");
    }
}
