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

pub mod checkpoint;
pub mod device_optim;
pub mod learner;
pub mod metrics;
pub mod online_eval;
pub mod optim;
pub mod run_dir;
pub mod signals;

use crate::config::Config;
use crate::data::{
    self, build_views, loader_config, open_data, recipe_warning, view_shape, Dataset,
};
use crate::eval::report;
use crate::plugins::Registry;
use anyhow::{bail, Context as _, Result};
use checkpoint::{Checkpoint, Store, TrainState};
use learner::Learner;
use metrics::MetricsLog;
use online_eval::online_eval;
use optim::Schedule;
use run_dir::{config_diff, config_hash, default_out, prepare_out, text_hash, RUN_MARKER};
use serde_json::{json, Map};
use std::path::PathBuf;
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

/// Runs `latent train`; returns the exit code (0, or 128 + the signal when stopped by one).
///
/// The phases: [`resolve`] the config and the run directory; [`Run::open`] claims the
/// directory and builds plugins, data and schedules; [`Run::restore`] reads the checkpoint on
/// `--resume`; [`Run::train`] runs the epochs; [`Run::finish`] evaluates and reports.
pub fn run(args: TrainArgs) -> Result<i32> {
    let world = crate::dist::world();
    let mut plan = resolve(&args)?;
    if world.is_distributed() {
        // one run directory: rank 0's (a default name has the time in it)
        plan.out = PathBuf::from(world.broadcast_string(&plan.out.to_string_lossy()));
        // every rank has read config.toml before rank 0 may rewrite it (an extension)
        world.barrier();
    }
    let mut run = Run::open(plan, &args)?;
    let at = if args.resume { run.restore()? } else { Position::default() };
    match run.train(at, args.stop_after)? {
        Ended::Stopped(code) => Ok(code),
        Ended::Finished(at) => run.finish(at),
    }
}

/// What a run will be: its config, its directory, and on `--resume --set train.epochs=N` the
/// config before that extension.
pub struct Plan {
    /// The resolved config.
    pub cfg: Config,
    /// The run directory.
    pub out: PathBuf,
    /// The run's config before `--resume --set` lengthened it.
    pub previous: Option<Config>,
}

/// Phase 1: the config (the file and `--set`, or the run's own config.toml on `--resume`,
/// where only the run's length may change) and the run directory.
pub fn resolve(args: &TrainArgs) -> Result<Plan> {
    if !args.resume {
        let cfg = Config::load(args.config.as_deref(), &args.sets)?;
        let out = args.out.clone().unwrap_or_else(|| default_out(&cfg));
        return Ok(Plan { cfg, out, previous: None });
    }
    let out = args.out.clone().context("--resume needs --out RUN_DIR (the run to continue)")?;
    if !out.join(RUN_MARKER).exists() && !out.join("config.toml").exists() {
        bail!(
            "{}: no run to resume: not a latent run directory (no {RUN_MARKER} or config.toml)",
            out.display()
        );
    }
    let cfg = Config::load(Some(&out.join("config.toml")), &[])
        .context("reading the run's config.toml")?;
    if args.config.is_some() {
        let asked = Config::load(args.config.as_deref(), &args.sets)?;
        if asked != cfg {
            bail!("--resume continues {} with its own config.toml; the config given differs (remove CONFIG and --set, or start a new run)", out.display());
        }
        return Ok(Plan { cfg, out, previous: None });
    }
    if args.sets.is_empty() {
        return Ok(Plan { cfg, out, previous: None });
    }
    // Extending a run: only its length may change (train.epochs, train.max_steps).
    let asked = Config::load(Some(&out.join("config.toml")), &args.sets)?;
    let changed = config_diff(&cfg.to_toml()?, &asked.to_toml()?);
    let other: Vec<String> = changed
        .into_iter()
        .filter(|k| !LENGTH_KEYS.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
        .collect();
    if !other.is_empty() {
        bail!(
            "--resume can change only the run's length ({}); {} would change too: start a new run for that",
            LENGTH_KEYS.join(", "),
            other.join(", ")
        );
    }
    let previous = (asked != cfg).then_some(cfg);
    Ok(Plan { cfg: asked, out, previous })
}

/// Where a run is: optimisation steps done, the epoch, and batches done in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Steps done.
    pub step: u64,
    /// The current epoch.
    pub epoch: u64,
    /// Batches of `epoch` already done (resuming mid-epoch skips them).
    pub batch: u64,
}

/// How [`Run::train`] ended.
pub enum Ended {
    /// Every step ran.
    Finished(Position),
    /// Stopped early (a signal, or `--stop-after`) with a checkpoint: the exit code.
    Stopped(i32),
}

/// A run that is open: its directory claimed, its plugins, data and schedules built.
pub struct Run {
    cfg: Config,
    out: PathBuf,
    previous: Option<Config>,
    config_text: String,
    hash: String,
    reg: Registry,
    train: Arc<Dataset>,
    test: Option<Dataset>,
    views: Vec<crate::plugins::Augment>,
    learner: Learner,
    loader: data::LoaderConfig,
    steps_per_epoch: u64,
    total: u64,
    sched: Schedule,
    store: Store,
    log: MetricsLog,
    last_loss: Option<f32>,
    /// Rank 0 of a data-parallel run, or the only process: it writes the run directory.
    root: bool,
    _lock: Option<run_dir::RunLock>,
    _watchdog: Option<crate::plugins::watchdog::Armed>,
}

impl Run {
    /// Phase 2: claims the run directory (marked, locked, config.toml written), installs the
    /// signal handlers and the watchdog, loads the plugins and the data, and sizes the run.
    pub fn open(plan: Plan, args: &TrainArgs) -> Result<Run> {
        let Plan { cfg, out, previous } = plan;
        // the device first: a missing GPU is said before the run directory is touched
        crate::device::open(&cfg.device)?;
        // in a data-parallel run, rank 0 alone writes the run directory
        let root = crate::dist::world().is_root();
        let lock = if root { Some(prepare_out(&out, args.resume)?) } else { None };
        let config_text = cfg.to_toml()?;
        if root && !args.resume {
            checkpoint::write_atomic(&out.join("config.toml"), config_text.as_bytes())?;
        }
        let hash = text_hash(&config_text);
        signals::install();
        // Plugin calls of this thread that never return end the run (train.call_timeout_s).
        let watchdog = crate::plugins::watchdog::arm(cfg.train.call_timeout_s, &out);

        let reg = Registry::discover(&args.plugin_dirs)?;
        let splits = open_data(&cfg)?;
        let train = Arc::new(splits.train);
        let views = build_views(&reg, &cfg)?;
        let shape = view_shape(&views, train.shape, cfg.train.global_views)?;
        if let Some(w) = recipe_warning(&cfg, train.shape) {
            tracing::warn!("{w}");
        }
        let mut learner = Learner::build(&reg, &cfg, shape)?;
        // multi-crop: the encoder must take the other views' size too, with the same output
        for (i, v) in views.iter().enumerate() {
            let s = v.output_shape(train.shape)?;
            if s != shape {
                let d = learner.encoder.out_dim(s).with_context(|| {
                    format!(
                        "encoder '{}' cannot take the images of augment[{i}] ({s:?}), a local view",
                        cfg.encoder.plugin
                    )
                })?;
                if d != learner.feat_dim {
                    bail!("encoder '{}' gives {d} features for the images of augment[{i}] ({s:?}) but {} for the global views ({shape:?})", cfg.encoder.plugin, learner.feat_dim);
                }
            }
        }
        let needs_labels = learner.objective.manifest.needs_labels;
        if needs_labels && train.labels.is_empty() {
            bail!(
                "objective '{}' needs labels, but {} has none",
                cfg.objective.plugin,
                cfg.data.source
            );
        }
        let bs = cfg.train.batch_size;
        let loader = loader_config(&cfg, &train, needs_labels)?;
        let steps_per_epoch = data::loader::epoch_batches(&train, &loader)
            .with_context(|| format!("config key `train.batch_size` ({bs})"))?
            .len() as u64;
        let mut total = steps_per_epoch * cfg.train.epochs;
        if cfg.train.max_steps > 0 {
            total = if total == 0 { cfg.train.max_steps } else { total.min(cfg.train.max_steps) };
        }
        let sched = Schedule::new(&cfg.optim, bs, total, steps_per_epoch);
        let store = Store::new(&out, cfg.train.keep_checkpoints);
        let log = if root { MetricsLog::open(&out)? } else { MetricsLog::discard(&out) };
        if root && splits.test.is_none() {
            tracing::info!("{} has no test split: the collapse monitor uses training images and there is no kNN evaluation", cfg.data.source);
        }
        Ok(Run {
            cfg,
            out,
            previous,
            config_text,
            hash,
            reg,
            train,
            test: splits.test,
            views,
            learner,
            loader,
            steps_per_epoch,
            total,
            sched,
            store,
            log,
            last_loss: None,
            root,
            _lock: lock,
            _watchdog: watchdog,
        })
    }

    /// Phase 3 (`--resume`): checks that the latest checkpoint was written with this run's
    /// config (or, for an extension, with the config before it), loads its state, and says
    /// where the run goes on.
    pub fn restore(&mut self) -> Result<Position> {
        let (out, total) = (&self.out, self.total);
        let ck = checkpoint::load(out)?;
        // an extension (`--resume --set train.epochs=N`): the checkpoint's config is the run's
        // config.toml before the change; the new one is written once the checkpoint matches it
        let (expected, expected_hash) = match &self.previous {
            Some(p) => (p, config_hash(p)?),
            None => (&self.cfg, self.hash.clone()),
        };
        let same = ck.state.config_hash == expected_hash
            || written_by_an_older_latent(ck.state.config.as_deref(), expected);
        if !same {
            let keys: Vec<String> = ck
                .state
                .config
                .as_deref()
                .map(|old| config_diff(old, &self.config_text))
                .unwrap_or_default()
                .iter()
                .map(|k| format!("`{k}`"))
                .collect();
            let which = if keys.is_empty() {
                String::new()
            } else {
                format!(": {} differ{}", keys.join(", "), if keys.len() == 1 { "s" } else { "" })
            };
            bail!(
                "the checkpoint in {} was written with another config than {}/config.toml{which} (hash {} vs {}); undo the change, or start a new run",
                out.display(),
                out.display(),
                ck.state.config_hash,
                self.hash
            );
        }
        if self.previous.is_some() && self.root {
            checkpoint::write_atomic(&out.join("config.toml"), self.config_text.as_bytes())?;
            let (a, b) = (self.sched.lr(ck.state.step), ck.state.total_steps);
            eprintln!(
                "extending {}: {b} steps planned, now {total}. The learning-rate schedule (and any schedule of the objective, such as BYOL's τ) is recomputed over {total} steps: at step {} the rate is {a:.4} (warm-up and cosine decay stretched to the new length).",
                out.display(),
                ck.state.step
            );
        }
        self.learner.load_state(&ck.tensors, ck.state.optim_t)?;
        self.last_loss = ck.state.last_loss;
        let mut at =
            Position { step: ck.state.step, epoch: ck.state.epoch, batch: ck.state.batch_in_epoch };
        // the checkpoint at the end of a run keeps the last epoch's number; a run extended from
        // there goes on with the next epoch's data order
        let spe = self.steps_per_epoch;
        if at.batch == 0 && spe > 0 && at.step >= (at.epoch + 1) * spe {
            at.epoch = at.step / spe;
        }
        self.log.drop_after(at.step, at.batch > 0)?;
        tracing::info!(
            "resuming {} at step {} (epoch {}, batch {})",
            out.display(),
            at.step,
            at.epoch,
            at.batch
        );
        Ok(at)
    }

    /// Writes a checkpoint of the run at `at` (rank 0 of a data-parallel run; the others
    /// write nothing and answer None).
    fn save(&mut self, at: Position) -> Result<Option<PathBuf>> {
        if !self.root {
            return Ok(None);
        }
        let state = TrainState {
            step: at.step,
            epoch: at.epoch,
            batch_in_epoch: at.batch,
            total_steps: self.total,
            seed: self.cfg.train.seed,
            optim_t: self.learner.optim.t,
            config_hash: self.hash.clone(),
            abi_version: latent_abi::ABI_VERSION.into(),
            last_loss: self.last_loss,
            config: Some(self.config_text.clone()),
        };
        self.store.save(&Checkpoint { tensors: self.learner.state_tensors()?, state }).map(Some)
    }

    /// Phase 4: the epochs from `at` to the end of the run, with a checkpoint after each
    /// epoch (and every `train.checkpoint_every` steps); a signal or `--stop-after` stops
    /// after the current step with a checkpoint.
    pub fn train(&mut self, mut at: Position, stop_after: Option<u64>) -> Result<Ended> {
        let (total, spe) = (self.total, self.steps_per_epoch);
        let world = crate::dist::world();
        tracing::info!(
            "training {} + {} on {} ({} images, {:?}) for {total} steps of {}; run directory {}",
            self.cfg.objective.plugin,
            self.cfg.encoder.plugin,
            self.train.name,
            self.train.len(),
            self.train.shape,
            self.cfg.train.batch_size,
            self.out.display()
        );
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if !self.root {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        bar.set_position(at.step);
        // resumed inside an epoch: its mean loss counts the steps logged before the stop too
        let mut resumed_loss = if at.batch > 0 && self.root {
            self.log.epoch_losses(at.epoch, at.step)
        } else {
            (0.0, 0)
        };
        while at.step < total {
            let mut epoch_loss = std::mem::take(&mut resumed_loss);
            let mut alarms_told = std::collections::BTreeSet::new();
            let t_epoch = Instant::now();
            let mut t_last = Instant::now();
            let epoch = at.epoch;
            let info = latent_abi::EpochInfo {
                epoch,
                epochs: self.cfg.train.epochs,
                steps_per_epoch: spe,
            };
            self.learner
                .objective
                .begin_epoch(info)
                .with_context(|| format!("starting epoch {epoch}"))?;
            // Resuming mid-epoch rebuilds the epoch's plan and skips the batches already done.
            let loader = data::Loader::new(
                self.train.clone(),
                self.views.clone(),
                &data::LoaderConfig { epoch, ..self.loader.clone() },
            )?;
            for batch in loader.skip(at.batch as usize) {
                if at.step >= total {
                    break;
                }
                let step = at.step;
                let batch = batch
                    .with_context(|| format!("loading batch {} of epoch {epoch}", at.batch))?;
                let lr = self.sched.lr(step);
                crate::plugins::watchdog::set_step(step);
                let res = self.learner.step(&batch.views, &batch.labels, step, total, lr).with_context(|| {
                    let keep = self.store.latest().map(|p| p.display().to_string()).unwrap_or_else(|| "none yet".into());
                    format!("training stopped at step {step} (epoch {epoch}); the last good checkpoint is {keep}")
                })?;
                at.step += 1;
                at.batch += 1;
                let step = at.step;
                let dt = t_last.elapsed().as_secs_f64();
                t_last = Instant::now();
                let n_img = batch.views[0].shape[0] * world.size();
                epoch_loss.0 += res.loss as f64;
                epoch_loss.1 += 1;
                self.last_loss = Some(res.loss);
                let mut f = Map::new();
                f.insert("step".into(), json!(step));
                f.insert("epoch".into(), json!(epoch));
                f.insert("loss".into(), json!(res.loss));
                f.insert("lr".into(), json!(lr));
                f.insert("tau".into(), json!(res.target_momentum));
                f.insert("images_per_s".into(), json!(n_img as f64 / dt));
                f.insert("views_per_s".into(), json!((n_img * batch.views.len()) as f64 / dt));
                if world.is_distributed() {
                    // this rank's collectives in the step (rank 0's, as the log is its)
                    let (bytes, secs) = world.take_traffic();
                    f.insert("comm_bytes".into(), json!(bytes));
                    f.insert("comm_s".into(), json!(secs));
                }
                for (k, v) in &res.metrics {
                    f.insert(k.clone(), json!(v));
                    // an objective raises `alarm_<what>` (DINO: `alarm_uniform`); warn once an epoch
                    if k.starts_with("alarm_") && *v != 0.0 && alarms_told.insert(k.clone()) {
                        tracing::warn!(
                            "objective '{}' raised `{k}` at step {step} (epoch {epoch}); the plugin's documentation says what it means. The run goes on",
                            self.cfg.objective.plugin
                        );
                    }
                }
                self.log.write("step", f)?;
                bar.set_position(step);
                bar.set_message(format!("loss {:.4}  {:.0} img/s", res.loss, n_img as f64 / dt));
                if self.cfg.train.checkpoint_every > 0
                    && step.is_multiple_of(self.cfg.train.checkpoint_every)
                {
                    // metrics.jsonl holds every step up to the checkpoint, whatever ends the process later
                    self.log.flush()?;
                    self.save(at)?;
                    // the other ranks wait here, not inside the next step's plugin calls,
                    // where the watchdog would count rank 0's writing against them
                    world.barrier();
                }
                let stop = stop_after.is_some_and(|s| step >= s);
                // a signal to any rank stops every rank after this same step
                let signal = world.max_i32(signals::received());
                if signal != 0 || stop {
                    self.log.flush()?;
                    bar.abandon();
                    if let Some(p) = self.save(at)? {
                        eprintln!("stopped at step {step}; checkpoint {}", p.display());
                        eprintln!(
                            "resume with: latent train --resume --out {}",
                            self.out.display()
                        );
                    }
                    world.barrier(); // no rank exits before rank 0's checkpoint is complete
                    return Ok(Ended::Stopped(if signal == 0 { 0 } else { 128 + signal }));
                }
            }
            // epoch finished (or the step budget ran out inside it)
            let step = at.step;
            let finished_epoch = step.is_multiple_of(spe.max(1)) || step >= total;
            let mean = epoch_loss.0 / epoch_loss.1.max(1) as f64;
            let mut f = Map::new();
            f.insert("epoch".into(), json!(epoch));
            f.insert("step".into(), json!(step));
            f.insert("loss".into(), json!(mean));
            f.insert("seconds".into(), json!(t_epoch.elapsed().as_secs_f64()));
            self.log.write("epoch", f)?;
            self.learner.check_ranks_agree(epoch)?;
            tracing::info!(
                "epoch {epoch}: mean loss {mean:.4} ({:.1} s)",
                t_epoch.elapsed().as_secs_f64()
            );
            let next_epoch = if finished_epoch && step < total { epoch + 1 } else { epoch };
            if step < total && self.root {
                let knn = self.cfg.eval.every_epochs > 0
                    && (epoch + 1).is_multiple_of(self.cfg.eval.every_epochs);
                online_eval(
                    &mut self.learner,
                    &self.cfg,
                    &self.train,
                    self.test.as_ref(),
                    epoch,
                    step,
                    knn,
                    None,
                    &mut self.log,
                )?;
            }
            self.log.flush()?; // before the checkpoint, as above
            let plots = if self.root { crate::inspect::plots::write(&self.out) } else { Ok(()) };
            if let Err(e) = plots {
                tracing::warn!("the plots were not redrawn: {e:#}");
            }
            // the step budget ran out inside an epoch: record how far into it, so that a run
            // extended from here (`--resume --set train.max_steps=N`) continues that epoch's plan
            let saved = if step.is_multiple_of(spe.max(1)) {
                Position { step, epoch: next_epoch, batch: 0 }
            } else {
                at
            };
            self.save(saved)?;
            world.barrier(); // rank 0's evaluation, plots and checkpoint (as above)
            at = Position { step, epoch: next_epoch, batch: 0 };
        }
        bar.finish_and_clear();
        Ok(Ended::Finished(at))
    }

    /// Phase 5: the final evaluation (kNN, probe and baselines on the test split, into
    /// `eval.json` and the last point of `eval.png`), the plots, and the report printed.
    pub fn finish(mut self, at: Position) -> Result<i32> {
        if !self.root {
            return Ok(0); // rank 0 evaluates and reports
        }
        let mut summary = String::new();
        if let Some(test) = &self.test {
            if !self.train.labels.is_empty() {
                let method = format!("{} ({})", self.cfg.objective.plugin, self.cfg.encoder.plugin);
                let rep = report::full(
                    &self.reg,
                    &self.cfg,
                    &mut self.learner.encoder,
                    &method,
                    &self.train,
                    test,
                )?;
                // the last point of eval.png is the report's own row, not computed a second time
                online_eval(
                    &mut self.learner,
                    &self.cfg,
                    &self.train,
                    Some(test),
                    at.epoch,
                    at.step,
                    false,
                    rep.rows.first(),
                    &mut self.log,
                )?;
                checkpoint::write_atomic(
                    &self.out.join("eval.json"),
                    serde_json::to_string_pretty(&rep)?.as_bytes(),
                )?;
                summary = rep.table();
            }
        }
        self.log.flush()?;
        crate::inspect::plots::write(&self.out)?;
        println!("run directory: {}", self.out.display());
        if !summary.is_empty() {
            println!("{summary}");
        }
        Ok(0)
    }
}

/// A checkpoint whose hash differs only because an older latent wrote the same config in
/// other words (before config.toml wrote f32 values in their shortest form): its TOML, read
/// back, is `expected`.
fn written_by_an_older_latent(checkpoint_toml: Option<&str>, expected: &Config) -> bool {
    checkpoint_toml
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| Config::from_table(t).ok())
        .is_some_and(|c| &c == expected)
}
