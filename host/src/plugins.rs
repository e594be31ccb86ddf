//! Finding, loading and checking plugin libraries; host-side handles around plugin objects.
//!
//! Search path, in order: every `--plugin-dir`, then the entries of `LATENT_PLUGIN_PATH`
//! (`:`-separated), then the default: the directory of the `latent` binary and its `plugins/`
//! subdirectory (so it works right after `cargo build` and after an install that copies the
//! libraries beside the binary). A file is a candidate when its name is a platform dynamic
//! library (`lib*.so`, `*.dylib`, `*.dll`) that exports latent's root module.
//!
//! Loading goes through abi_stable's `lib_header_from_path(..)?.init_root_module::<M>()`, which
//! checks the abi_stable header, the SDK version and every type layout; libraries are never
//! unloaded. The handles ([`Encoder`], [`Objective`], [`Augment`]) turn every [`PluginError`]
//! into an `anyhow` error and check what comes back (shapes, lengths, finite values), so a
//! faulty plugin ends in a message naming it and the call, never in a crash of the host.

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{RResult, RStr, RVec};
use anyhow::{anyhow, bail, Context as _, Result};
use latent_abi::*;
use latent_sdk::kit::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One plugin found on the search path.
#[derive(Clone)]
pub struct Entry {
    /// Its manifest.
    pub manifest: Manifest,
    /// The library file it came from.
    pub file: PathBuf,
    lib: PluginLibRef,
}

/// All plugins found on the search path.
#[derive(Clone, Default)]
pub struct Registry {
    /// The directories searched, in order.
    pub search_path: Vec<PathBuf>,
    /// Plugins by name.
    pub entries: BTreeMap<String, Entry>,
    /// Libraries that failed to load, with the reason (reported by `latent plugins`).
    pub failures: Vec<(PathBuf, String)>,
    /// Plugins hidden by one of the same name earlier on the search path: (name, the file
    /// used, the file hidden).
    pub shadowed: Vec<(String, PathBuf, PathBuf)>,
}

/// The search path: `dirs`, then `LATENT_PLUGIN_PATH`, then beside the executable.
pub fn search_path(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = dirs.to_vec();
    if let Some(p) = std::env::var_os("LATENT_PLUGIN_PATH") {
        out.extend(std::env::split_paths(&p).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(dir.join("plugins"));
        out.push(dir);
    }
    out
}

/// Identity of a file: hard links (cargo links `deps/libx.so` to `libx.so`) and symbolic links
/// to one library count once.
fn file_id(p: &Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(p) {
            return format!("{}:{}", m.dev(), m.ino());
        }
    }
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

fn is_dylib(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = std::env::consts::DLL_EXTENSION;
    name.ends_with(&format!(".{ext}")) && (cfg!(windows) || name.starts_with("lib"))
}

/// Loads the root module of `file`, explaining any failure in words a user can act on.
pub fn load_library(file: &Path) -> Result<PluginLibRef> {
    if !file.exists() {
        bail!("{}: no such file", file.display());
    }
    // An absolute path, so that the dynamic loader never searches the system for the name.
    let abs = file.canonicalize().with_context(|| format!("{}: cannot resolve the path", file.display()))?;
    let header = lib_header_from_path(&abs).map_err(|e| explain(file, e))?;
    header.init_root_module::<PluginLibRef>().map_err(|e| explain(file, e))
}

fn explain(file: &Path, e: LibraryError) -> anyhow::Error {
    let f = file.display();
    match e {
        LibraryError::OpenError { err, .. } => {
            anyhow!("{f}: not a loadable library: {err}")
        }
        LibraryError::GetSymbolError { .. } => anyhow!(
            "{f}: not a latent plugin: the library exports no abi_stable root module \
             (a plugin crate ends with `latent_sdk::export_plugins!(...)`)"
        ),
        LibraryError::IncompatibleVersionNumber { library_name, expected_version, actual_version } => anyhow!(
            "{f}: built against an incompatible ABI: the host speaks {library_name} {expected_version}, \
             the library {actual_version}; rebuild the plugin against this latent-sdk (ABI {ABI_VERSION})"
        ),
        LibraryError::AbiInstability(err) => {
            // abi_stable's report dumps both layouts; keep its verdict lines.
            let detail = err.to_string();
            let lines: Vec<&str> = detail.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let mut keep = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                if l.starts_with("Error:") {
                    keep.extend(lines[i..(i + 5).min(lines.len())].iter().take_while(|x| !x.starts_with("Layout")).copied());
                }
            }
            if keep.is_empty() {
                keep = lines.into_iter().take(8).collect();
            }
            anyhow!(
                "{f}: incompatible type layout: the library was built against a latent ABI that \
                 differs from this host's ({ABI_VERSION}); rebuild it against this latent-sdk.\n    {}",
                keep.join("\n    ")
            )
        }
        LibraryError::InvalidAbiHeader(h) => anyhow!(
            "{f}: built with an incompatible abi_stable ({h:?}); rebuild it against this latent-sdk (ABI {ABI_VERSION})"
        ),
        other => anyhow!("{f}: cannot load: {other}"),
    }
}

fn pres<T>(r: RResult<T, PluginError>) -> Result<T> {
    r.into_result().map_err(anyhow::Error::new)
}

/// Reads the manifests of a loaded library.
pub fn manifests(lib: PluginLibRef, file: &Path) -> Result<Vec<Manifest>> {
    let f = lib.manifests();
    pres(f()).map(RVec::into_vec).with_context(|| format!("{}: reading the plugin manifests", file.display()))
}

impl Registry {
    /// Scans the search path. Libraries that fail to load are recorded in `failures`; of two
    /// plugins with the same name the first on the search path is used (as `PATH` does) and
    /// the other is recorded in `shadowed`, with a warning naming both files.
    pub fn discover(dirs: &[PathBuf]) -> Result<Registry> {
        Self::discover_in(search_path(dirs))
    }

    /// Scans exactly `dirs` (no environment, no default), as [`Registry::discover`] does.
    pub fn discover_in(dirs: Vec<PathBuf>) -> Result<Registry> {
        let mut reg = Registry { search_path: dirs, ..Default::default() };
        let mut seen = std::collections::HashSet::new();
        for dir in reg.search_path.clone() {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_dylib(p)).collect();
            files.sort();
            for file in files {
                if !seen.insert(file_id(&file)) {
                    continue;
                }
                match load_library(&file).and_then(|lib| Ok((lib, manifests(lib, &file)?))) {
                    Ok((lib, ms)) => {
                        for m in ms {
                            let name = m.name.to_string();
                            if let Some(prev) = reg.entries.get(&name) {
                                tracing::warn!(
                                    "two plugins are named '{name}': using {}, not {} (later on the search path)",
                                    prev.file.display(),
                                    file.display()
                                );
                                reg.shadowed.push((name, prev.file.clone(), file.clone()));
                                continue;
                            }
                            reg.entries.insert(name, Entry { manifest: m, file: file.clone(), lib });
                        }
                    }
                    Err(e) => {
                        // Only libraries that look like ours are worth reporting: others (the
                        // Rust std dylib, build scripts' outputs) are silently skipped.
                        let msg = format!("{e:#}");
                        if !msg.contains("exports no abi_stable root module") {
                            reg.failures.push((file, msg));
                        }
                    }
                }
            }
        }
        Ok(reg)
    }

    /// The entry for `name`, which must be of `kind`.
    pub fn get(&self, name: &str, kind: PluginKind) -> Result<&Entry> {
        let e = self.entries.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.entries.values().filter(|e| e.manifest.kind == kind).map(|e| e.manifest.name.as_str()).collect();
            let dirs: Vec<String> = self.search_path.iter().map(|p| p.display().to_string()).collect();
            anyhow!(
                "no {} plugin named '{name}'; available: [{}]; searched: {}",
                kind.as_str(),
                names.join(", "),
                dirs.join(", ")
            )
        })?;
        if e.manifest.kind != kind {
            bail!("plugin '{name}' ({}) is an {}, not an {}", e.file.display(), e.manifest.kind.as_str(), kind.as_str());
        }
        Ok(e)
    }

    /// Builds an encoder.
    pub fn encoder(&self, name: &str, config: &serde_json::Value, ctx: &Context) -> Result<Encoder> {
        let e = self.get(name, PluginKind::Encoder)?;
        let cfg = config_json(config);
        let obj = pres((e.lib.new_encoder())(RStr::from_str(name), RStr::from_str(&cfg), ctx))?;
        Ok(Encoder::new(name, obj))
    }

    /// Builds an objective.
    pub fn objective(&self, name: &str, config: &serde_json::Value, ctx: &Context) -> Result<Objective> {
        let e = self.get(name, PluginKind::Objective)?;
        let cfg = config_json(config);
        let obj = pres((e.lib.new_objective())(RStr::from_str(name), RStr::from_str(&cfg), ctx))?;
        Ok(Objective { name: name.to_string(), manifest: e.manifest.clone(), obj })
    }

    /// Builds an augmentation.
    pub fn augmentation(&self, name: &str, config: &serde_json::Value, ctx: &Context) -> Result<Augment> {
        let e = self.get(name, PluginKind::Augmentation)?;
        let cfg = config_json(config);
        let obj = pres((e.lib.new_augmentation())(RStr::from_str(name), RStr::from_str(&cfg), ctx))?;
        Ok(Augment { name: name.to_string(), obj: Arc::new(obj) })
    }
}

fn config_json(v: &serde_json::Value) -> String {
    if v.is_null() { String::new() } else { v.to_string() }
}

// ---------------------------------------------------------------------------------------------
// Handles

fn to_tensor(plugin: &str, call: &str, d: TensorDesc) -> Result<Tensor> {
    // A shape whose product overflows would panic the host in Tensor::from_desc.
    if d.shape.iter().try_fold(1u64, |a, &s| a.checked_mul(s)).and_then(|n| usize::try_from(n).ok()).is_none() {
        bail!("plugin '{plugin}' returned a bad tensor from `{call}`: shape {:?} has more values than can be addressed", d.shape);
    }
    Tensor::from_desc(d).with_context(|| format!("plugin '{plugin}' returned a bad tensor from `{call}`"))
}

fn check_finite(plugin: &str, call: &str, what: &str, data: &[f32]) -> Result<()> {
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!("plugin '{plugin}' returned a non-finite value ({}) in {what} from `{call}` at index {i}", data[i]);
    }
    Ok(())
}

/// Parameter access shared by encoders and objectives.
pub trait ParamAccess {
    /// Plugin name.
    fn name(&self) -> &str;
    /// Parameter descriptors.
    fn params(&mut self) -> Result<Vec<ParamDesc>>;
    /// All values, in `params` order.
    fn read_params(&mut self) -> Result<Vec<Tensor>>;
    /// Overwrites all values.
    fn write_params(&mut self, values: Vec<Tensor>) -> Result<()>;
    /// Gradients (empty tensors for non-trained), then zeroed.
    fn take_grads(&mut self) -> Result<Vec<Tensor>>;
}

macro_rules! param_access {
    ($t:ty) => {
        impl ParamAccess for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn params(&mut self) -> Result<Vec<ParamDesc>> {
                let _w = crate::watchdog::enter(&self.name, "params");
                pres(self.obj.params()).map(RVec::into_vec)
            }
            fn read_params(&mut self) -> Result<Vec<Tensor>> {
                let _w = crate::watchdog::enter(&self.name, "read_params");
                let v = pres(self.obj.read_params())?;
                v.into_iter().map(|d| to_tensor(&self.name, "read_params", d)).collect()
            }
            fn write_params(&mut self, values: Vec<Tensor>) -> Result<()> {
                let _w = crate::watchdog::enter(&self.name, "write_params");
                pres(self.obj.write_params(values.into_iter().map(Tensor::into_desc).collect()))
            }
            fn take_grads(&mut self) -> Result<Vec<Tensor>> {
                let _w = crate::watchdog::enter(&self.name, "take_grads");
                let v = pres(self.obj.take_grads())?;
                let g: Vec<Tensor> = v.into_iter().map(|d| to_tensor(&self.name, "take_grads", d)).collect::<Result<_>>()?;
                for t in &g {
                    check_finite(&self.name, "take_grads", "a gradient", &t.data)?;
                }
                Ok(g)
            }
        }
    };
}

/// A loaded encoder.
pub struct Encoder {
    /// Plugin name.
    pub name: String,
    obj: EncoderBox,
}

impl Encoder {
    /// Wraps an encoder object (loaded, or linked in-process).
    pub fn new(name: &str, obj: EncoderBox) -> Encoder {
        Encoder { name: name.to_string(), obj }
    }

    /// Output dimension for images of shape `[C, H, W]`.
    pub fn out_dim(&mut self, shape: [usize; 3]) -> Result<usize> {
        let s: RVec<u64> = shape.iter().map(|&d| d as u64).collect();
        Ok(pres(self.obj.out_dim(s))? as usize)
    }

    /// Forward; checks that `[N, D]` comes back with finite values.
    pub fn forward(&mut self, images: Tensor, train: bool) -> Result<Tensor> {
        let n = images.shape[0];
        let w = crate::watchdog::enter(&self.name, "forward");
        let y = pres(self.obj.forward(images.into_desc(), train));
        drop(w);
        let y = to_tensor(&self.name, "forward", y?)?;
        if y.shape.len() != 2 || y.shape[0] != n {
            bail!("plugin '{}' returned features of shape {:?} from `forward`, expected [{n}, D]", self.name, y.shape);
        }
        check_finite(&self.name, "forward", "the features", &y.data)?;
        Ok(y)
    }

    /// Backward.
    pub fn backward(&mut self, grad: Tensor) -> Result<()> {
        let _w = crate::watchdog::enter(&self.name, "backward");
        pres(self.obj.backward(grad.into_desc()))
    }
}
param_access!(Encoder);

/// A loaded objective.
pub struct Objective {
    /// Plugin name.
    pub name: String,
    /// Its manifest (needs_labels, needs_target).
    pub manifest: Manifest,
    obj: ObjectiveBox,
}

/// The host-side result of an objective step.
pub struct StepResult {
    /// Loss.
    pub loss: f32,
    /// d loss / d views.
    pub grads: Vec<Tensor>,
    /// Metrics.
    pub metrics: Vec<(String, f64)>,
    /// EMA rate for the target.
    pub target_momentum: f64,
}

impl Objective {
    /// Wraps an objective object (loaded, or linked in-process).
    pub fn new(manifest: Manifest, obj: ObjectiveBox) -> Objective {
        Objective { name: manifest.name.to_string(), manifest, obj }
    }

    /// One step; checks the loss is finite and each gradient has its view's shape.
    pub fn compute(&mut self, views: &[Tensor], targets: &[Tensor], labels: &[i64], step: u64, total: u64, train: bool) -> Result<StepResult> {
        let input = ObjectiveInput {
            views: views.iter().cloned().map(Tensor::into_desc).collect(),
            targets: targets.iter().cloned().map(Tensor::into_desc).collect(),
            labels: labels.iter().copied().collect(),
            step,
            total_steps: total,
            train,
        };
        let w = crate::watchdog::enter(&self.name, "compute");
        let out = pres(self.obj.compute(input));
        drop(w);
        let out = out?;
        if !out.loss.is_finite() {
            bail!("plugin '{}' returned a non-finite loss ({}) from `compute` at step {step}", self.name, out.loss);
        }
        let grads: Vec<Tensor> = out.grads.into_iter().map(|d| to_tensor(&self.name, "compute", d)).collect::<Result<_>>()?;
        if train {
            if grads.len() != views.len() {
                bail!("plugin '{}' returned {} gradients from `compute` for {} views", self.name, grads.len(), views.len());
            }
            for (g, v) in grads.iter().zip(views) {
                if g.shape != v.shape {
                    bail!("plugin '{}' returned a gradient of shape {:?} from `compute` for a view of shape {:?}", self.name, g.shape, v.shape);
                }
                check_finite(&self.name, "compute", "a gradient", &g.data)?;
            }
        }
        Ok(StepResult {
            loss: out.loss,
            grads,
            metrics: out.metrics.into_iter().map(|m| (m.name.into_string(), m.value)).collect(),
            target_momentum: out.target_momentum,
        })
    }

    /// Tells the objective that epoch `info.epoch` starts (its schedules in epochs). A plugin
    /// built before the call existed answers with the SDK's default, which does nothing.
    pub fn begin_epoch(&mut self, info: latent_abi::EpochInfo) -> Result<()> {
        let w = crate::watchdog::enter(&self.name, "begin_epoch");
        let out = pres(self.obj.begin_epoch(info));
        drop(w);
        out
    }
}
param_access!(Objective);

/// A loaded augmentation; cheap to clone and shared by loader threads.
#[derive(Clone)]
pub struct Augment {
    /// Plugin name.
    pub name: String,
    obj: Arc<AugmentationBox>,
}

impl Augment {
    /// Wraps an augmentation object (loaded, or linked in-process).
    pub fn new(name: &str, obj: AugmentationBox) -> Augment {
        Augment { name: name.to_string(), obj: Arc::new(obj) }
    }

    /// Output shape for an input shape.
    pub fn output_shape(&self, shape: [usize; 3]) -> Result<[usize; 3]> {
        let s: RVec<u64> = shape.iter().map(|&d| d as u64).collect();
        let o = pres(self.obj.output_shape(s))?;
        match o[..] {
            [c, h, w] => Ok([c as usize, h as usize, w as usize]),
            _ => bail!("plugin '{}' returned output shape {:?} from `output_shape`, expected [C, H, W]", self.name, o),
        }
    }

    /// Applies the augmentation to `[N, C, H, W]` images with one seed per image.
    pub fn apply(&self, images: Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (n, c, h, w) = images.dims4("images")?;
        let o = self.output_shape([c, h, w])?;
        let y = to_tensor(&self.name, "apply", pres(self.obj.apply(images.into_desc(), seeds.iter().copied().collect()))?)?;
        if y.shape != [n, o[0], o[1], o[2]] {
            bail!("plugin '{}' returned shape {:?} from `apply`, expected {:?}", self.name, y.shape, [n, o[0], o[1], o[2]]);
        }
        check_finite(&self.name, "apply", "the images", &y.data)?;
        Ok(y)
    }
}
