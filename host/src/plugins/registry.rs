//! The search path, loading libraries with abi_stable (every refusal explained), and the
//! registry of the plugins found.

use super::handles::{Augment, Encoder, Objective};
use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{RResult, RStr, RVec};
use anyhow::{anyhow, bail, Context as _, Result};
use latent_abi::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One plugin found on the search path.
#[derive(Clone)]
pub struct Entry {
    /// Its manifest.
    pub manifest: Manifest,
    /// The library file it came from.
    pub file: PathBuf,
    lib: PluginLibRef,
    /// The library's device calls (`latent_abi::DeviceExport`); none in a library built
    /// before them, whose encoders then run on the CPU.
    device: Option<DeviceFns>,
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
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
    {
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
    let abs = file
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve the path", file.display()))?;
    let header = lib_header_from_path(&abs).map_err(|e| explain(file, e))?;
    header.init_root_module::<PluginLibRef>().map_err(|e| explain(file, e))
}

/// The device calls a library exports beside its root module, layout-checked as the root
/// module is; none when it exports none (built before them). Call after [`load_library`].
pub fn load_device_fns(file: &Path) -> Result<Option<DeviceFns>> {
    let abs = file
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve the path", file.display()))?;
    let raw = abi_stable::library::RawLibrary::load_at(&abs).map_err(|e| explain(file, e))?;
    // the library stays loaded for the process's life, as every plugin library does
    let raw: &'static abi_stable::library::RawLibrary = Box::leak(Box::new(raw));
    // SAFETY: the symbol, when present, is the `DeviceExport` static that
    // `latent_sdk::export_plugins!` writes (the struct never changes; a new one gets a new
    // symbol), and what it points to is used only after its layout check below.
    let export: &'static DeviceExport =
        match unsafe { raw.get::<*const DeviceExport>(DEVICE_EXPORT_SYMBOL) } {
            Ok(sym) => unsafe { &**sym },
            Err(_) => return Ok(None),
        };
    abi_stable::abi_stability::abi_checking::check_layout_compatibility(
        <DeviceFns as abi_stable::StableAbi>::LAYOUT,
        export.layout,
    )
    .map_err(|e| {
        anyhow!(
            "{}: its device calls were built against a latent ABI ({}) that differs from this host's ({ABI_VERSION}); rebuild it against this latent-sdk:\n{e}",
            file.display(),
            export.abi_version
        )
    })?;
    Ok(Some(export.fns))
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

pub(crate) fn pres<T>(r: RResult<T, PluginError>) -> Result<T> {
    r.into_result().map_err(anyhow::Error::new)
}

/// Reads the manifests of a loaded library.
pub fn manifests(lib: PluginLibRef, file: &Path) -> Result<Vec<Manifest>> {
    let f = lib.manifests();
    pres(f())
        .map(RVec::into_vec)
        .with_context(|| format!("{}: reading the plugin manifests", file.display()))
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
            let mut files: Vec<PathBuf> =
                rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_dylib(p)).collect();
            files.sort();
            for file in files {
                if !seen.insert(file_id(&file)) {
                    continue;
                }
                let loaded = load_library(&file)
                    .and_then(|lib| Ok((lib, manifests(lib, &file)?, load_device_fns(&file)?)));
                match loaded {
                    Ok((lib, ms, device)) => {
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
                            reg.entries.insert(
                                name,
                                Entry { manifest: m, file: file.clone(), lib, device },
                            );
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
            let names: Vec<&str> = self
                .entries
                .values()
                .filter(|e| e.manifest.kind == kind)
                .map(|e| e.manifest.name.as_str())
                .collect();
            let dirs: Vec<String> =
                self.search_path.iter().map(|p| p.display().to_string()).collect();
            anyhow!(
                "no {} plugin named '{name}'; available: [{}]; searched: {}",
                kind.as_str(),
                names.join(", "),
                dirs.join(", ")
            )
        })?;
        if e.manifest.kind != kind {
            bail!(
                "plugin '{name}' ({}) is an {}, not an {}",
                e.file.display(),
                e.manifest.kind.as_str(),
                kind.as_str()
            );
        }
        Ok(e)
    }

    /// Builds an encoder.
    pub fn encoder(
        &self,
        name: &str,
        config: &serde_json::Value,
        ctx: &Context,
    ) -> Result<Encoder> {
        let e = self.get(name, PluginKind::Encoder)?;
        let cfg = config_json(config);
        let (name_, cfg_) = (RStr::from_str(name), RStr::from_str(&cfg));
        Ok(match e.device {
            Some(d) => Encoder::with_device_calls(name, pres((d.new_encoder)(name_, cfg_, ctx))?),
            None => Encoder::new(name, pres((e.lib.new_encoder())(name_, cfg_, ctx))?),
        })
    }

    /// Builds an objective.
    pub fn objective(
        &self,
        name: &str,
        config: &serde_json::Value,
        ctx: &Context,
    ) -> Result<Objective> {
        let e = self.get(name, PluginKind::Objective)?;
        let cfg = config_json(config);
        let obj = pres((e.lib.new_objective())(RStr::from_str(name), RStr::from_str(&cfg), ctx))?;
        Ok(Objective::new(e.manifest.clone(), obj))
    }

    /// Builds an augmentation.
    pub fn augmentation(
        &self,
        name: &str,
        config: &serde_json::Value,
        ctx: &Context,
    ) -> Result<Augment> {
        let e = self.get(name, PluginKind::Augmentation)?;
        let cfg = config_json(config);
        let obj =
            pres((e.lib.new_augmentation())(RStr::from_str(name), RStr::from_str(&cfg), ctx))?;
        Ok(Augment::new(name, obj))
    }
}

fn config_json(v: &serde_json::Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}
