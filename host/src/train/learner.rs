//! The learner: online encoder, objective (with its heads), optional EMA target encoder, and
//! the one optimizer over all of their parameters. One call of [`Learner::step`] is one
//! training step across the plugin boundary:
//!
//! ```text
//! views v₁..v_V [B,C,H,W] ──concat──▶ encoder.forward(train) ──split──▶ h₁..h_V [B,D]
//!                          └────────▶ target.forward (if the objective needs it, no backward)
//! objective.compute(h, h', labels) ──▶ loss, ∂L/∂h₁..∂L/∂h_V, metrics, τ
//! encoder.backward(concat ∂L/∂h)
//! optimizer: every Weight / NoDecay parameter of encoder and objective (take_grads → update → write;
//!            an empty gradient means "no update this step", as DINO's frozen last layer)
//! EMA:       target ← τ·target + (1−τ)·online (encoder copy, and the objective's Target params)
//! ```
//! The views go through the encoder as one batch, so the matrix products are larger; batch-norm
//! statistics span all views (as SimCLR's reference implementation does) unless
//! `train.batch_norm = "per_view"`, which has the encoder take them per view (its `bn_groups`).
//!
//! Multi-crop (`train.global_views` = G > 0): views of different sizes go through the encoder
//! as one batch per size, the group with the most pixels last; after the objective that group
//! is back-propagated directly and every other group passes through the encoder again for its
//! gradient (the encoder keeps the state of its last forward only), which is checked to give
//! the same features bit for bit, and the running statistics of one pass per group are put
//! back. The target sees the first G views only. In a data-parallel run, each view's features
//! are gathered from every rank and each rank back-propagates its own rows (docs/ARCHITECTURE.md).
//!
//! While the target's trained parameters equal the online ones (at the start, and after every
//! step that returned τ = 0, as SimSiam's does: its target is the online network, detached),
//! the target's features are the online features, so the second encoder pass is skipped: in
//! training mode it would give the same values bit for bit (with multi-crop, only when the
//! global views went through the encoder as a batch of their own).

use crate::config::{BatchNormScope, Config, PluginConfig};
use crate::dist::{self, World};
use crate::plugins::handles::ObjectiveResult;
use crate::plugins::{Encoder, Entry, Objective, ParamAccess, Registry};
use crate::train::device_optim::DeviceOptim;
use crate::train::optim::Optimizer;
use anyhow::{bail, Context as _, Result};
use latent_abi::{Context, DeviceParam, ParamDesc, ParamRole, PluginKind};
use latent_sdk::kit::Tensor;
use std::collections::BTreeMap;

/// Online encoder + objective + optional target encoder + optimizer.
pub struct Learner {
    /// The online encoder.
    pub encoder: Encoder,
    /// The objective.
    pub objective: Objective,
    /// The EMA target encoder.
    pub target: Option<Encoder>,
    /// The optimizer.
    pub optim: Optimizer,
    /// Encoder parameter descriptors.
    pub enc_params: Vec<ParamDesc>,
    /// Objective parameter descriptors.
    pub obj_params: Vec<ParamDesc>,
    /// Image shape the encoder sees.
    pub input_shape: [usize; 3],
    /// Encoder output dimension.
    pub feat_dim: usize,
    /// The target's trained parameters equal the online encoder's, so its features would too
    /// and [`Learner::step`] skips its pass (false makes it run; without a target, unused).
    pub target_is_online: bool,
    /// The first this many views are the global ones the target sees (multi-crop); 0: all.
    pub global_views: usize,
    /// The online encoder drops paths at random in training (`drop_path` > 0), so its
    /// features are never the target's, which runs without.
    pub online_drops_paths: bool,
    /// On a GPU: the optimizer and the EMA there, on the encoders' own buffers (none: the
    /// parameters go through the host, as on the CPU).
    pub on_device: Option<OnDevice>,
    /// Seconds the objective took in the last step (with the target's features, on the CPU):
    /// with the encoder on a GPU, the part of the step still on the host.
    pub last_objective_s: f64,
}

/// The encoders' parameters on the GPU, and the optimizer that updates them there.
pub struct OnDevice {
    /// The optimizer.
    pub optim: DeviceOptim,
    /// The online encoder's parameters there.
    pub online: Vec<DeviceParam>,
    /// The target encoder's, when it has them (else its EMA goes through the host).
    pub target: Vec<DeviceParam>,
}

/// Does the plugin's default config have `key`?
fn has_config_key(entry: &Entry, key: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(&entry.manifest.default_config)
        .is_ok_and(|d| d.get(key).is_some())
}

/// Fills `key` in a plugin config from the data when the plugin has that key and the user did
/// not set it (e.g. the encoder's `in_channels`, the objective's `input_dim`).
fn fill_default(reg: &Registry, pc: &PluginConfig, key: &str, value: usize) -> serde_json::Value {
    let mut cfg = pc.config.clone();
    if reg.entries.get(&pc.plugin).is_some_and(|e| has_config_key(e, key)) {
        if let Some(obj) = cfg.as_object_mut() {
            obj.entry(key.to_string()).or_insert(serde_json::json!(value));
        }
    }
    cfg
}

/// A train setting that the encoder carries out through one of its config keys
/// (`train.batch_norm = "per_view"` → `bn_groups`, `train.sync_batchnorm` → `sync_batch_norm`).
struct EncoderKey<'a> {
    /// The train key and the value that asks for it, as the user wrote them.
    setting: (&'a str, &'a str),
    /// The encoder's key, its value, and that value in words.
    key: &'a str,
    value: serde_json::Value,
    says: String,
    /// What to do instead when the encoder has no such key.
    otherwise: &'a str,
}

/// Sets the encoder's key for a train setting, or says why it cannot: the encoder has no such
/// key, or the user's encoder config gives it another value.
fn set_encoder_key(
    reg: &Registry,
    cfg: &Config,
    enc_cfg: &mut serde_json::Value,
    k: EncoderKey,
) -> Result<()> {
    let ((setting, asked), key) = (k.setting, k.key);
    let entry =
        reg.get(&cfg.encoder.plugin, PluginKind::Encoder).context("config key `encoder.plugin`")?;
    if !has_config_key(entry, key) {
        bail!(
            "config key `{setting}`: {asked} needs an encoder with a `{key}` key, and encoder '{}' has none ({})",
            cfg.encoder.plugin,
            k.otherwise
        );
    }
    let obj = enc_cfg.as_object_mut().context("config key `encoder`: not a table")?;
    match obj.get(key) {
        None => {
            obj.insert(key.into(), k.value);
        }
        Some(v) if *v == k.value => {}
        Some(v) => bail!(
            "config key `{setting}`: {asked} sets the encoder's {key} to {}, but `encoder.config.{key}` says {v}; leave one of them out",
            k.says
        ),
    }
    Ok(())
}

/// The context a plugin instance gets: its seed, and in a data-parallel run the ranks'
/// collective and this rank's share of the machine's cores.
pub fn plugin_context(seed: u64) -> Context {
    let world = dist::world();
    Context {
        seed,
        threads: if world.is_distributed() { world.threads() as u32 } else { 0 },
        collective: world.collective().into(),
        ..Default::default()
    }
}

/// Builds an encoder from the config, for images of `input_shape`.
pub fn build_encoder(
    reg: &Registry,
    cfg: &Config,
    input_shape: [usize; 3],
) -> Result<(Encoder, usize)> {
    let ctx = plugin_context(cfg.train.seed);
    let mut enc_cfg = fill_default(reg, &cfg.encoder, "in_channels", input_shape[0]);
    if cfg.train.batch_norm == BatchNormScope::PerView {
        let views = cfg.augment.len();
        let k = EncoderKey {
            setting: ("train.batch_norm", "\"per_view\""),
            key: "bn_groups",
            value: serde_json::json!(views),
            says: format!("the {views} views"),
            otherwise: "use \"all_views\", or an encoder such as resnet",
        };
        set_encoder_key(reg, cfg, &mut enc_cfg, k)?;
    }
    if cfg.train.sync_batchnorm {
        let k = EncoderKey {
            setting: ("train.sync_batchnorm", "true"),
            key: "sync_batch_norm",
            value: serde_json::json!(true),
            says: "true".into(),
            otherwise: "leave it false, or use an encoder such as resnet",
        };
        set_encoder_key(reg, cfg, &mut enc_cfg, k)?;
    }
    let mut encoder =
        reg.encoder(&cfg.encoder.plugin, &enc_cfg, &ctx).context("config key `encoder`")?;
    let dim = encoder.out_dim(input_shape).with_context(|| {
        format!("encoder '{}' cannot take images of shape {input_shape:?}", cfg.encoder.plugin)
    })?;
    encoder.bind(&crate::device::open(&cfg.device)?)?;
    Ok((encoder, dim))
}

impl Learner {
    /// Loads and wires the plugins named in `cfg` for images of `input_shape` (after augmentation).
    pub fn build(reg: &Registry, cfg: &Config, input_shape: [usize; 3]) -> Result<Learner> {
        let (g, nv) = (cfg.train.global_views, cfg.augment.len());
        if g > 0 && g < nv {
            if cfg.train.batch_norm == BatchNormScope::PerView {
                bail!("config key `train.batch_norm`: \"per_view\" with multi-crop (train.global_views = {g} of {nv} views) is not supported yet: the encoder runs once per view size, and its statistics groups are set per run");
            }
            if cfg.encoder.config.get("bn_groups").and_then(|v| v.as_u64()).is_some_and(|b| b > 1) {
                bail!("config key `encoder.config.bn_groups`: statistics groups with multi-crop (train.global_views = {g} of {nv} views) are not supported yet: each pass holds the views of one size only");
            }
        }
        let (mut encoder, feat_dim) = build_encoder(reg, cfg, input_shape)?;
        let ctx = plugin_context(cfg.train.seed.wrapping_add(1));
        let obj_cfg = fill_default(reg, &cfg.objective, "input_dim", feat_dim);
        let mut objective = reg
            .objective(&cfg.objective.plugin, &obj_cfg, &ctx)
            .context("config key `objective`")?;
        let enc_params = encoder.params()?;
        let obj_params = objective.params()?;
        let drop_path = |c: &Config| c.encoder.config.get("drop_path").and_then(|v| v.as_f64());
        let mut target = if objective.manifest.needs_target {
            // the EMA target (DINO's teacher) runs without drop-path, as the reference's
            let mut tcfg = cfg.clone();
            let has_key = reg
                .get(&cfg.encoder.plugin, PluginKind::Encoder)
                .is_ok_and(|e| has_config_key(e, "drop_path"));
            if let (true, Some(obj)) = (has_key, tcfg.encoder.config.as_object_mut()) {
                obj.insert("drop_path".into(), serde_json::json!(0.0));
            }
            let (mut t, _) = build_encoder(reg, &tcfg, input_shape)?;
            t.write_params(encoder.read_params()?).context("initialising the target encoder")?;
            Some(t)
        } else {
            None
        };
        let on_device = match encoder.gpu().cloned() {
            Some(gpu) if DeviceOptim::handles(&cfg.optim, &enc_params) => {
                let online = encoder.device_params(&enc_params)?;
                if online.is_empty() {
                    None
                } else {
                    let target = match target.as_mut() {
                        Some(t) => t.device_params(&enc_params)?,
                        None => Vec::new(),
                    };
                    Some(OnDevice { optim: DeviceOptim::new(gpu), online, target })
                }
            }
            _ => None,
        };
        if let Some(gpu) = encoder.gpu() {
            tracing::info!(
                "optimizer of encoder '{}': {}",
                encoder.name,
                if on_device.is_some() {
                    format!("on {} with its parameters", gpu.device())
                } else {
                    "on the host, parameters copied each step (LARS, clipping, or an encoder without device parameters)".into()
                }
            );
        }
        Ok(Learner {
            last_objective_s: 0.0,
            on_device,
            encoder,
            objective,
            target,
            optim: Optimizer::new(cfg.optim.clone())?,
            enc_params,
            obj_params,
            input_shape,
            feat_dim,
            target_is_online: true,
            global_views: cfg.train.global_views,
            online_drops_paths: drop_path(cfg).is_some_and(|r| r > 0.0),
        })
    }

    /// One training step on `views` (one `[B,C,H,W]` tensor per view; in a data-parallel
    /// run, this rank's slice of each view, with `labels` those of the global batch). The
    /// answer is the objective's, with the host's metrics added (`grad_norm` when clipping,
    /// `weight_decay` on a schedule) and no gradients (they went into the encoder's backward).
    pub fn step(
        &mut self,
        views: &[Tensor],
        labels: &[i64],
        step: u64,
        total: u64,
        lr: f64,
    ) -> Result<ObjectiveResult> {
        let world = dist::world();
        let b = views[0].shape[0] * world.size();
        let nv = views.len();
        // one encoder pass per view size (multi-crop), the largest group last
        let groups = size_groups(views);
        let mut local: Vec<Tensor> = vec![Tensor::new(vec![0], vec![]); nv];
        // the features of every group but the last, which pass again below
        let mut firsts = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let f = self.encoder.forward(concat_at(views, g)?, true)?;
            for (k, t) in split(&f, g.len()).into_iter().enumerate() {
                local[g[k]] = t;
            }
            if i + 1 < groups.len() {
                firsts.push(f);
            }
        }
        // the running statistics of one pass per group
        let kept = if firsts.is_empty() { None } else { Some(self.encoder.read_params()?) };
        let hs = gather_views(world, local)?;
        // the target (DINO's teacher) sees the global views only
        let tv = if self.global_views == 0 { nv } else { self.global_views };
        let targets = match &mut self.target {
            // the online features are the target's only where the globals were a batch alone
            Some(_)
                if self.target_is_online
                    && !self.online_drops_paths
                    && globals_alone(&groups, tv, nv) =>
            {
                hs[..tv].to_vec()
            }
            Some(t) => gather_views(world, split(&t.forward(concat(&views[..tv])?, true)?, tv))?,
            None => Vec::new(),
        };
        let labels: &[i64] = if self.objective.manifest.needs_labels { labels } else { &[] };
        if self.objective.manifest.needs_labels && labels.len() != b {
            bail!(
                "objective '{}' needs labels, but the data has none (use a labelled dataset)",
                self.objective.name
            );
        }
        let t_obj = std::time::Instant::now();
        let res = self.objective.compute(&hs, &targets, labels, step, total, true);
        self.last_objective_s = t_obj.elapsed().as_secs_f64();
        let res = if tv < nv {
            res.with_context(|| format!("with train.global_views = {tv}, objective '{}' gets the features of all {nv} views and the target's of the first {tv}", self.objective.name))?
        } else {
            res?
        };
        let own = own_rows(world, &res.grads);
        let (last, others) = groups.split_last().context("no views")?;
        self.encoder.backward(concat_at(&own, last)?)?;
        for (g, first) in others.iter().zip(&firsts) {
            // the encoder keeps the state of its last forward only: pass this group again
            let f = self.encoder.forward(concat_at(views, g)?, true)?;
            if f.data.iter().zip(&first.data).any(|(a, b)| a.to_bits() != b.to_bits()) {
                bail!(
                    "encoder '{}' gave other features for the same images in a second training forward: multi-crop passes the smaller views twice (once for the features, once for the gradient) and needs a training forward that depends only on its input and parameters",
                    self.encoder.name
                );
            }
            self.encoder.backward(concat_at(&own, g)?)?;
        }
        if let Some(kept) = kept {
            self.encoder
                .write_params(kept)
                .context("restoring the encoder's running statistics")?;
        }
        let tau = res.target_momentum;
        // on a GPU with its optimizer there, the encoder's gradients stay there
        let mut eg = if self.on_device.is_some() {
            Vec::new()
        } else {
            take_grads(&mut self.encoder, &self.enc_params)?
        };
        // each rank back-propagated its own rows of d loss / d features: their sum is the
        // gradient of the global loss (the objective's heads saw the global batch everywhere)
        all_reduce_grads(world, &self.enc_params, &mut eg);
        let og = take_grads(&mut self.objective, &self.obj_params)?;
        let grad_norm = self.apply(eg, og, step, total, lr, tau)?;
        let mut metrics = res.metrics;
        if self.optim.cfg.clip_grad.is_some() || self.optim.cfg.clip_grad_norm.is_some() {
            metrics.push(("grad_norm".into(), grad_norm));
        }
        if self.optim.cfg.weight_decay_end.is_some() {
            metrics.push(("weight_decay".into(), self.optim.wd));
        }
        Ok(ObjectiveResult { loss: res.loss, grads: Vec::new(), metrics, target_momentum: tau })
    }

    /// The optimizer step from the gradients of a step: the encoder's `eg` (empty where they
    /// stay on the device with its optimizer) and the objective's `og` (empty: the objective is
    /// left alone), then the EMA of the target with momentum `tau`. Returns the gradient norm
    /// when clipping (0 otherwise: the norm, a pass over every gradient, is not taken).
    fn apply(
        &mut self,
        mut eg: Vec<Tensor>,
        mut og: Vec<Tensor>,
        step: u64,
        total: u64,
        lr: f64,
        tau: f64,
    ) -> Result<f64> {
        self.optim.begin_step();
        self.optim.wd = self.optim.cfg.weight_decay_at(step, total);
        let mut trained: Vec<&mut [f32]> = trained_grads(&self.enc_params, &mut eg)
            .chain(trained_grads(&self.obj_params, &mut og))
            .collect();
        let c = &self.optim.cfg;
        let grad_norm = if c.clip_grad.is_some() || c.clip_grad_norm.is_some() {
            c.clip(&mut trained)
        } else {
            0.0
        };
        match &mut self.on_device {
            Some(d) => d.optim.update(&self.optim, "encoder", &self.enc_params, &d.online, lr)?,
            None => update(
                &mut self.optim,
                &mut self.encoder,
                &self.enc_params,
                eg,
                "encoder",
                lr,
                tau,
            )?,
        }
        if !og.is_empty() {
            update(
                &mut self.optim,
                &mut self.objective,
                &self.obj_params,
                og,
                "objective",
                lr,
                tau,
            )?;
        }
        if let Some(t) = &mut self.target {
            match &self.on_device {
                Some(d) if !d.target.is_empty() => {
                    d.optim.ema(&self.enc_params, &d.target, &d.online, tau)?
                }
                _ => ema_encoder(t, &mut self.encoder, &self.enc_params, tau)?,
            }
            // τ = 0 copies the online parameters exactly (0·ξ + 1·θ = θ)
            self.target_is_online = tau == 0.0;
        }
        Ok(grad_norm)
    }

    /// One optimizer step of the encoder alone, from `grads` (in `params` order, as
    /// `take_grads` gives them), and the target's EMA with momentum `tau`. With the optimizer
    /// on a GPU, the gradients are copied into the encoder's buffers there first. `check-device`
    /// runs it on both sides with the same numbers: the device's optimizer against the host's.
    pub fn step_with_grads(
        &mut self,
        grads: Vec<Tensor>,
        step: u64,
        total: u64,
        lr: f64,
        tau: f64,
    ) -> Result<()> {
        if grads.len() != self.enc_params.len() {
            bail!("{} gradients for {} parameters", grads.len(), self.enc_params.len());
        }
        let eg = match (&self.on_device, self.encoder.gpu()) {
            (Some(d), Some(gpu)) => {
                for ((p, g), desc) in d.online.iter().zip(&grads).zip(&self.enc_params) {
                    if matches!(desc.role, ParamRole::Weight | ParamRole::NoDecay) && !g.is_empty()
                    {
                        if g.len() != p.grad.len() {
                            bail!(
                                "gradient of {} has {} values, expected {}",
                                desc.name,
                                g.len(),
                                p.grad.len()
                            );
                        }
                        // SAFETY: the encoder owns its gradient buffers for its whole life
                        // (the ABI's contract for `device_params`).
                        let mut view = unsafe { gpu.borrow(&p.grad) }?;
                        gpu.upload_into(&g.data, &mut view)?;
                    }
                }
                Vec::new()
            }
            _ => grads,
        };
        self.apply(eg, Vec::new(), step, total, lr, tau)?;
        Ok(())
    }

    /// In a data-parallel run, checks that every rank holds the same trained parameters
    /// (encoder, objective with its EMA heads, target encoder): they get the same gradients
    /// and updates, so a difference is a bug, said here rather than found in the results.
    /// The objective's buffers (MoCo's queue) are compared too; the encoders' (batch-norm
    /// running statistics) are per rank unless synchronised, and are not.
    pub fn check_ranks_agree(&mut self, epoch: u64) -> Result<()> {
        let world = dist::world();
        if !world.is_distributed() {
            return Ok(());
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut add = |descs: &[ParamDesc], vals: Vec<Tensor>, objective: bool| {
            for (d, v) in descs.iter().zip(vals) {
                if d.role != ParamRole::Buffer || objective {
                    std::hash::Hash::hash(&d.name.as_str(), &mut h);
                    v.data.iter().for_each(|x| std::hash::Hash::hash(&x.to_bits(), &mut h));
                }
            }
        };
        add(&self.enc_params, self.encoder.read_params()?, false);
        add(&self.obj_params, self.objective.read_params()?, true);
        if let Some(t) = &mut self.target {
            add(&self.enc_params, t.read_params()?, false);
        }
        let all = world.gather_u64(std::hash::Hasher::finish(&h));
        if let Some(r) = all.iter().position(|&x| x != all[0]) {
            bail!(
                "after epoch {epoch}, rank {r}'s parameters differ from rank 0's (fingerprints {:x} and {:x}): the ranks no longer train one model",
                all[r],
                all[0]
            );
        }
        Ok(())
    }

    /// Features of `images` with the online encoder in evaluation mode.
    pub fn features(&mut self, images: Tensor) -> Result<Tensor> {
        self.encoder.forward(images, false)
    }

    /// Every tensor a checkpoint holds (see [`crate::train::checkpoint`] for the names).
    pub fn state_tensors(&mut self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (d, v) in self.enc_params.iter().zip(self.encoder.read_params()?) {
            out.insert(format!("encoder.{}", d.name), v);
        }
        for (d, v) in self.obj_params.iter().zip(self.objective.read_params()?) {
            out.insert(format!("objective.{}", d.name), v);
        }
        if let Some(t) = &mut self.target {
            for (d, v) in self.enc_params.iter().zip(t.read_params()?) {
                out.insert(format!("target_encoder.{}", d.name), v);
            }
        }
        if let Some(d) = &self.on_device {
            d.optim.to_host(&mut self.optim.state)?;
        }
        for (name, st) in &self.optim.state {
            if !st.m.is_empty() {
                out.insert(format!("optim.m.{name}"), Tensor::new(vec![st.m.len()], st.m.clone()));
            }
            if !st.v.is_empty() {
                out.insert(format!("optim.v.{name}"), Tensor::new(vec![st.v.len()], st.v.clone()));
            }
        }
        Ok(out)
    }

    /// Restores everything [`Learner::state_tensors`] saved.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, optim_t: u64) -> Result<()> {
        load_module(&mut self.encoder, &self.enc_params, "encoder", tensors)?;
        load_module(&mut self.objective, &self.obj_params, "objective", tensors)?;
        if let Some(t) = &mut self.target {
            load_module(t, &self.enc_params, "target_encoder", tensors)?;
            let trained = |d: &&ParamDesc| matches!(d.role, ParamRole::Weight | ParamRole::NoDecay);
            let (on, tv) = (self.encoder.read_params()?, t.read_params()?);
            self.target_is_online = self
                .enc_params
                .iter()
                .zip(on.iter().zip(&tv))
                .filter(|(d, _)| trained(d))
                .all(|(_, (a, b))| a.data == b.data);
        }
        self.optim.state.clear();
        // every optimizer moment must belong to a trained parameter and have its size
        let sizes: BTreeMap<String, usize> =
            [("encoder", &self.enc_params), ("objective", &self.obj_params)]
                .into_iter()
                .flat_map(|(g, ds)| {
                    ds.iter().map(move |d| {
                        (format!("{g}.{}", d.name), d.shape.iter().product::<u64>() as usize)
                    })
                })
                .collect();
        for (k, v) in tensors {
            let (name, first) = match (k.strip_prefix("optim.m."), k.strip_prefix("optim.v.")) {
                (Some(n), _) => (n, true),
                (_, Some(n)) => (n, false),
                _ => continue,
            };
            let Some(&n) = sizes.get(name) else {
                bail!("checkpoint tensor {k} is optimizer state for {name}, which is not a parameter of this encoder or objective");
            };
            if v.len() != n {
                bail!(
                    "checkpoint tensor {k} has {} values (shape {:?}), but {name} has {n}",
                    v.len(),
                    v.shape
                );
            }
            check_finite(k, v)?;
            let st = self.optim.state.entry(name.to_string()).or_default();
            if first {
                st.m = v.data.clone()
            } else {
                st.v = v.data.clone()
            }
        }
        self.optim.t = optim_t;
        if let Some(d) = &mut self.on_device {
            d.optim.from_host(&self.optim.state, "encoder")?;
        }
        Ok(())
    }
}

/// Loads a module's parameters from checkpoint tensors named `<prefix>.<param>`.
pub fn load_module(
    m: &mut dyn ParamAccess,
    descs: &[ParamDesc],
    prefix: &str,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    let mut vals = Vec::with_capacity(descs.len());
    for d in descs {
        let key = format!("{prefix}.{}", d.name);
        let t = tensors.get(&key).with_context(|| {
            format!(
                "the checkpoint has no tensor {key} (was it written with another {prefix} config?)"
            )
        })?;
        let want: Vec<usize> = d.shape.iter().map(|&s| s as usize).collect();
        if t.shape != want {
            bail!("checkpoint tensor {key} has shape {:?}, the {prefix} expects {want:?}", t.shape);
        }
        check_finite(&key, t)?;
        vals.push(t.clone());
    }
    m.write_params(vals)
}

/// A checkpoint tensor with NaN or infinity would train and evaluate silently wrong.
fn check_finite(key: &str, t: &Tensor) -> Result<()> {
    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
        bail!("checkpoint tensor {key} holds a non-finite value ({}) at index {i}", t.data[i]);
    }
    Ok(())
}

/// The global batch's features per view from this rank's `[b, D]` per view: view v is every
/// rank's rows of it, in rank order (the loader gave rank r the images `r·b..(r+1)·b` of each
/// view). In one process, `local` itself.
fn gather_views(world: &World, local: Vec<Tensor>) -> Result<Vec<Tensor>> {
    if !world.is_distributed() {
        return Ok(local);
    }
    let (v, feats) = (local.len(), concat(&local)?);
    let all = world.all_gather(&feats.data);
    let (n, per_view) = (world.size(), feats.len() / v);
    let b = feats.shape[0] / v;
    let mut shape = feats.shape.clone();
    shape[0] = b * n;
    Ok((0..v)
        .map(|j| {
            let mut data = Vec::with_capacity(per_view * n);
            for r in 0..n {
                let start = r * feats.len() + j * per_view;
                data.extend_from_slice(&all[start..start + per_view]);
            }
            Tensor::new(shape.clone(), data)
        })
        .collect())
}

/// The views' indices grouped by image size, in order of first appearance, with the group of
/// the most pixels last (its forward is the one the backward follows directly).
fn size_groups(views: &[Tensor]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, v) in views.iter().enumerate() {
        match groups.iter_mut().find(|g| views[g[0]].shape == v.shape) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let pixels = |g: &Vec<usize>| g.len() * views[g[0]].len();
    if let Some(big) = (0..groups.len()).max_by_key(|&i| (pixels(&groups[i]), usize::MAX - i)) {
        let g = groups.remove(big);
        groups.push(g);
    }
    groups
}

/// Did views `0..tv` go through the encoder as a batch of their own (all views, or one size
/// group that is exactly the global views)?
fn globals_alone(groups: &[Vec<usize>], tv: usize, nv: usize) -> bool {
    tv == nv || groups.iter().any(|g| g.iter().copied().eq(0..tv))
}

/// This rank's rows of each global `[B, D]` gradient (the inverse of [`gather_views`]).
fn own_rows(world: &World, grads: &[Tensor]) -> Vec<Tensor> {
    if !world.is_distributed() {
        return grads.to_vec();
    }
    let (n, r) = (world.size(), world.rank());
    grads
        .iter()
        .map(|g| {
            let per = g.len() / n;
            let mut shape = g.shape.clone();
            shape[0] /= n;
            Tensor::new(shape, g.data[r * per..(r + 1) * per].to_vec())
        })
        .collect()
}

/// Sums the trained parameters' gradients over the ranks, in one all-reduce.
fn all_reduce_grads(world: &World, descs: &[ParamDesc], grads: &mut [Tensor]) {
    if !world.is_distributed() {
        return;
    }
    let mut flat: Vec<f32> = trained_grads(descs, grads).flat_map(|g| g.iter().copied()).collect();
    world.all_reduce_sum(&mut flat);
    let mut at = 0;
    for g in trained_grads(descs, grads) {
        g.copy_from_slice(&flat[at..at + g.len()]);
        at += g.len();
    }
}

/// Concatenates `[B, ...]` tensors along the first axis.
pub fn concat(ts: &[Tensor]) -> Result<Tensor> {
    concat_refs(&ts.iter().collect::<Vec<_>>())
}

/// [`concat`] of the tensors `ts[i]` for each `i` of `idx` (a size group of views), without
/// copying them first.
fn concat_at(ts: &[Tensor], idx: &[usize]) -> Result<Tensor> {
    concat_refs(&idx.iter().map(|&i| &ts[i]).collect::<Vec<_>>())
}

fn concat_refs(ts: &[&Tensor]) -> Result<Tensor> {
    let first = ts.first().context("nothing to concatenate")?;
    let mut shape = first.shape.clone();
    let mut data = Vec::with_capacity(first.len() * ts.len());
    for t in ts {
        if t.shape[1..] != first.shape[1..] {
            bail!(
                "views have different shapes: {:?} and {:?} (give every view the same output size)",
                first.shape,
                t.shape
            );
        }
        data.extend_from_slice(&t.data);
    }
    shape[0] = ts.iter().map(|t| t.shape[0]).sum();
    Ok(Tensor::new(shape, data))
}

/// Splits `[V*B, ...]` into `v` tensors `[B, ...]`.
pub fn split(t: &Tensor, v: usize) -> Vec<Tensor> {
    let b = t.shape[0] / v;
    let per = t.len() / v;
    let mut shape = t.shape.clone();
    shape[0] = b;
    t.data.chunks(per.max(1)).take(v).map(|c| Tensor::new(shape.clone(), c.to_vec())).collect()
}

/// A module's gradients, one per parameter (empty for those not trained, or frozen this step).
fn take_grads(m: &mut dyn ParamAccess, descs: &[ParamDesc]) -> Result<Vec<Tensor>> {
    if descs.is_empty() {
        return Ok(Vec::new());
    }
    let grads = m.take_grads()?;
    if grads.len() != descs.len() {
        bail!(
            "plugin '{}' returned {} gradients for {} parameters",
            m.name(),
            grads.len(),
            descs.len()
        );
    }
    Ok(grads)
}

/// The gradients the optimizer will apply: of trained parameters, not frozen this step.
fn trained_grads<'a>(
    descs: &'a [ParamDesc],
    grads: &'a mut [Tensor],
) -> impl Iterator<Item = &'a mut [f32]> + 'a {
    descs
        .iter()
        .zip(grads.iter_mut())
        .filter(|(d, g)| {
            matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) && !g.data.is_empty()
        })
        .map(|(_, g)| g.data.as_mut_slice())
}

fn update(
    optim: &mut Optimizer,
    m: &mut dyn ParamAccess,
    descs: &[ParamDesc],
    grads: Vec<Tensor>,
    prefix: &str,
    lr: f64,
    tau: f64,
) -> Result<()> {
    if descs.is_empty() {
        return Ok(());
    }
    let name = m.name().to_string();
    let mut vals = m.read_params()?;
    if vals.len() != descs.len() {
        bail!("plugin '{name}' returned {} values for {} parameters", vals.len(), descs.len());
    }
    for ((d, v), g) in descs.iter().zip(vals.iter_mut()).zip(&grads) {
        if matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
            if g.is_empty() && !v.is_empty() {
                continue; // frozen this step (PyTorch's grad = None): value and moments stay
            }
            if g.len() != v.len() {
                bail!("plugin '{name}' returned a gradient of {} values for parameter {} of {} values", g.len(), d.name, v.len());
            }
            optim.update(&format!("{prefix}.{}", d.name), d.role, &mut v.data, &g.data, lr);
        }
    }
    // EMA targets inside the module (e.g. BYOL's target projector).
    for i in 0..descs.len() {
        if descs[i].role == ParamRole::Target {
            let Some(src) = descs[i].ema_of.as_ref().into_option() else { continue };
            let j = descs.iter().position(|d| d.name == *src).with_context(|| {
                format!("plugin '{name}': target {} follows unknown parameter {src}", descs[i].name)
            })?;
            let online = vals[j].data.clone();
            ema(&mut vals[i].data, &online, tau);
        }
    }
    m.write_params(vals)
}

fn ema(target: &mut [f32], online: &[f32], tau: f64) {
    let (t, o) = (tau as f32, (1.0 - tau) as f32);
    for (a, b) in target.iter_mut().zip(online) {
        *a = t * *a + o * b;
    }
}

fn ema_encoder(
    target: &mut Encoder,
    online: &mut Encoder,
    descs: &[ParamDesc],
    tau: f64,
) -> Result<()> {
    let on = online.read_params()?;
    let mut tv = target.read_params()?;
    for ((d, t), o) in descs.iter().zip(tv.iter_mut()).zip(&on) {
        if matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
            ema(&mut t.data, &o.data, tau);
        }
    }
    target.write_params(tv)
}
