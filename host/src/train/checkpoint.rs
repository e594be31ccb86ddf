//! Checkpoints: tensors as safetensors, training state as JSON, written atomically.
//!
//! Layout of a run directory:
//! ```text
//! RUN/checkpoints/step-00000120/model.safetensors   parameters, BN state, optimizer state
//! RUN/checkpoints/step-00000120/state.json          epoch, step, seed, config hash, ...
//! RUN/checkpoints/latest                            the name of the newest complete checkpoint
//! ```
//! Tensor names in `model.safetensors` (all f32, loadable with Python's `safetensors`):
//! - `encoder.<param>`: the online encoder (weights, BN affine and running statistics);
//! - `objective.<param>`: the objective's heads (projector, predictor, target projector);
//! - `target_encoder.<param>`: the EMA target encoder, when the objective uses one;
//! - `optim.m.<group>.<param>` / `optim.v.<group>.<param>`: momentum / Adam moments.
//!
//! A checkpoint is written into `.tmp-step-N/` (each file fsynced), renamed to `step-N/`, and only
//! then does `latest` move (temporary file, fsync, rename). A process killed at any point leaves
//! `latest` naming a complete checkpoint; a failed write (disk full) keeps the previous one.

use anyhow::{bail, Context as _, Result};
use latent_sdk::kit::Tensor;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where training stands; saved beside the tensors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Optimisation steps done in all.
    pub step: u64,
    /// The epoch in progress (from 0).
    pub epoch: u64,
    /// Batches of that epoch already done.
    pub batch_in_epoch: u64,
    /// Total steps planned for the run.
    pub total_steps: u64,
    /// The run's seed (every random stream derives from it and the position above).
    pub seed: u64,
    /// Optimizer update count (Adam's t).
    pub optim_t: u64,
    /// SHA-256 of the resolved config.
    pub config_hash: String,
    /// The ABI version of the host that wrote it (`sdk_version` in checkpoints written before
    /// the ABI had a crate of its own).
    #[serde(alias = "sdk_version")]
    pub abi_version: String,
    /// Last training loss.
    pub last_loss: Option<f32>,
    /// The resolved config as TOML (so that a changed config.toml can be diffed key by key;
    /// absent in checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// Tensors and state of one checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Named tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// Training state.
    pub state: TrainState,
}

fn fsync_dir(dir: &Path) {
    // Directories can be fsynced on Unix; elsewhere this is best effort.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".tmp-{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    fsync_dir(dir);
    Ok(())
}

/// Serialises tensors to safetensors bytes, with `meta` in the header.
pub fn to_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            (k.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, b, s)| Ok((k.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, &Some(meta))?)
}

/// Reads safetensors bytes (f32 tensors only), naming `origin` in errors.
pub fn from_safetensors(bytes: &[u8], origin: &Path) -> Result<BTreeMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not a valid safetensors file: {e:?}", origin.display())
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} is {:?}, expected F32", origin.display(), view.dtype());
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

/// The checkpoints of one run.
pub struct Store {
    /// `RUN/checkpoints`.
    pub dir: PathBuf,
    /// How many to keep.
    pub keep: usize,
}

/// Test hook: `LATENT_FAULT_CHECKPOINT=abort-after-tensors` kills the process in the middle
/// of a checkpoint write; `fail-after-tensors` makes the write fail as a full disk would;
/// `fail-resave-after-tensors` fails only the second save of a step that has a checkpoint.
fn fault_hook(point: &str) -> Result<()> {
    match std::env::var("LATENT_FAULT_CHECKPOINT").ok().as_deref() {
        Some(v) if v == format!("abort-{point}") => std::process::abort(),
        Some(v) if v == format!("fail-{point}") => {
            bail!("simulated write failure (No space left on device)")
        }
        _ => Ok(()),
    }
}

impl Store {
    /// The store under `run_dir`.
    pub fn new(run_dir: &Path, keep: usize) -> Store {
        Store { dir: run_dir.join("checkpoints"), keep: keep.max(1) }
    }

    /// Writes a checkpoint atomically, moves `latest`, prunes old ones; returns its directory.
    pub fn save(&self, ck: &Checkpoint) -> Result<PathBuf> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let name = format!("step-{:08}", ck.state.step);
        let tmp = self.dir.join(format!(".tmp-{name}"));
        let dst = self.dir.join(&name);
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| -> Result<()> {
            fs::create_dir_all(&tmp)?;
            let meta = HashMap::from([
                ("step".to_string(), ck.state.step.to_string()),
                ("config_hash".to_string(), ck.state.config_hash.clone()),
                ("format".to_string(), "latent-checkpoint-1".to_string()),
            ]);
            write_synced(&tmp.join("model.safetensors"), &to_safetensors(&ck.tensors, meta)?)?;
            fault_hook("after-tensors")?;
            if dst.exists() {
                fault_hook("resave-after-tensors")?;
            }
            write_synced(
                &tmp.join("state.json"),
                serde_json::to_string_pretty(&ck.state)?.as_bytes(),
            )?;
            fsync_dir(&tmp);
            if dst.exists() {
                // never delete what `latest` may name: swap the new directory in, then remove
                // the old one (now at `tmp`)
                exchange(&tmp, &dst)?;
                fsync_dir(&self.dir);
                let _ = fs::remove_dir_all(&tmp);
            } else {
                fs::rename(&tmp, &dst)?;
            }
            fsync_dir(&self.dir);
            write_atomic(&self.dir.join("latest"), name.as_bytes())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            if complete(&dst) && read_state(&dst).is_ok_and(|s| s.step == ck.state.step) {
                tracing::warn!("could not rewrite checkpoint {} ({e:#}); the one written earlier at the same step is kept", dst.display());
                if self.latest_name().as_deref() != Some(name.as_str()) {
                    write_atomic(&self.dir.join("latest"), name.as_bytes())?;
                }
                return Ok(dst);
            }
            let prev =
                self.latest().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
            return Err(e.context(format!(
                "writing checkpoint {} failed; the previous checkpoint ({prev}) is intact",
                dst.display()
            )));
        }
        self.prune(&name);
        Ok(dst)
    }

    /// What `latest` says, if it is a bare `step-<digits>` name.
    fn latest_name(&self) -> Option<String> {
        let s = fs::read_to_string(self.dir.join("latest")).ok()?;
        let s = s.trim();
        is_step_name(s).then(|| s.to_string())
    }

    /// Complete `step-N/` directories, oldest first.
    fn complete_steps(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| Some(e.ok()?.path()))
                    .filter(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(is_step_name)
                            && complete(p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn prune(&self, newest: &str) {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with("step-"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let excess = names.len().saturating_sub(self.keep);
        for n in names.into_iter().take(excess) {
            if n != newest {
                let _ = fs::remove_dir_all(self.dir.join(n));
            }
        }
    }

    /// The directory of the newest complete checkpoint, if any: the one `latest` names, or,
    /// when `latest` is missing, corrupt or names an incomplete directory, the newest complete
    /// `step-N/` (with a warning).
    pub fn latest(&self) -> Option<PathBuf> {
        if let Some(p) = self.latest_name().map(|n| self.dir.join(n)).filter(|p| complete(p)) {
            return Some(p);
        }
        let newest = self.complete_steps().pop()?;
        let why = match fs::read_to_string(self.dir.join("latest")) {
            Err(_) => "is missing".to_string(),
            Ok(s) if !is_step_name(s.trim()) => format!(
                "does not name a checkpoint of this run ({:?})",
                s.trim().chars().take(80).collect::<String>()
            ),
            Ok(s) => format!("names {}, which is incomplete or missing", s.trim()),
        };
        tracing::warn!(
            "{}/latest {why}; using the newest complete checkpoint, {}",
            self.dir.display(),
            newest.display()
        );
        Some(newest)
    }
}

/// `step-` followed by digits only: a name inside the run, never a path.
fn is_step_name(s: &str) -> bool {
    s.strip_prefix("step-").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Both files of a checkpoint are there (written before the directory got its name).
fn complete(dir: &Path) -> bool {
    dir.join("state.json").is_file() && dir.join("model.safetensors").is_file()
}

fn read_state(dir: &Path) -> Result<TrainState> {
    let f = dir.join("state.json");
    let text = fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid training state", f.display()))
}

/// Swaps two directory entries in one step (Linux: `renameat2(RENAME_EXCHANGE)`); elsewhere, or
/// on a file system without it, moves `b` aside, renames `a` to `b` and moves the old `b` to `a`.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
        let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
        // SAFETY: two valid NUL-terminated paths; the call only reads them.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            return Ok(());
        }
    }
    let aside = b.with_extension("old");
    let _ = fs::remove_dir_all(&aside);
    fs::rename(b, &aside).with_context(|| format!("cannot move {} aside", b.display()))?;
    fs::rename(a, b)
        .with_context(|| format!("cannot rename {} to {}", a.display(), b.display()))?;
    fs::rename(&aside, a).with_context(|| format!("cannot move {} back", aside.display()))?;
    Ok(())
}

/// Loads a checkpoint directory (`step-N/`), a run directory (its latest checkpoint), or a
/// `model.safetensors` file directly.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let model = dir.join("model.safetensors");
    let bytes = fs::read(&model).with_context(|| format!("cannot read {}", model.display()))?;
    let tensors = from_safetensors(&bytes, &model)?;
    let state = read_state(&dir)?;
    Ok(Checkpoint { tensors, state })
}

/// Finds the checkpoint directory that `path` designates.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.parent().unwrap_or(Path::new(".")).to_path_buf());
    }
    if path.join("model.safetensors").exists() {
        return Ok(path.to_path_buf());
    }
    let store = Store::new(path, 1);
    if let Some(p) = store.latest() {
        return Ok(p);
    }
    if !path.exists() {
        bail!("{}: no such run directory or checkpoint", path.display());
    }
    bail!(
        "{}: no checkpoint found (expected {}/latest or a model.safetensors)",
        path.display(),
        store.dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(step: u64) -> Checkpoint {
        let mut tensors = BTreeMap::new();
        tensors.insert(
            "encoder.w".to_string(),
            Tensor::new(vec![2, 2], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE]),
        );
        tensors.insert("optim.m.encoder.w".to_string(), Tensor::new(vec![4], vec![0.5; 4]));
        let state = TrainState {
            step,
            epoch: 1,
            batch_in_epoch: 3,
            total_steps: 100,
            seed: 7,
            optim_t: step,
            config_hash: "abc".into(),
            abi_version: "0.2.0".into(),
            last_loss: Some(1.5),
            config: None,
        };
        Checkpoint { tensors, state }
    }

    #[test]
    fn save_load_roundtrip_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 2);
        for s in [10, 20, 30] {
            store.save(&ck(s)).unwrap();
        }
        let back = load(dir.path()).unwrap();
        assert_eq!(back.state, ck(30).state);
        assert_eq!(back.tensors, ck(30).tensors);
        let mut names: Vec<_> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["latest", "step-00000020", "step-00000030"]);
    }

    #[test]
    fn saving_a_step_twice_swaps_the_directory_and_leaves_nothing_behind() {
        // regression: the second save deleted step-N/ (which `latest` named) before renaming
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 3);
        store.save(&ck(6)).unwrap();
        let mut second = ck(6);
        second.state.epoch = 2;
        second.state.batch_in_epoch = 0;
        store.save(&second).unwrap();
        assert_eq!(load(dir.path()).unwrap().state, second.state);
        let mut names: Vec<_> = fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["latest", "step-00000006"]);
        // the fallback path of `exchange` (another OS, or no RENAME_EXCHANGE) gives the same
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("x"), b"new").unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(b.join("x"), b"old").unwrap();
        exchange(&a, &b).unwrap();
        assert_eq!(
            (fs::read(b.join("x")).unwrap(), fs::read(a.join("x")).unwrap()),
            (b"new".to_vec(), b"old".to_vec())
        );
    }

    #[test]
    fn a_missing_corrupt_or_escaping_latest_falls_back_to_the_newest_complete_checkpoint() {
        // regression: `echo x > latest` said "no checkpoint found" and the next run overwrote it
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 5);
        for s in [2, 4, 6] {
            store.save(&ck(s)).unwrap();
        }
        let other = tempfile::tempdir().unwrap();
        Store::new(other.path(), 1).save(&ck(99)).unwrap();
        let escape = format!(
            "../../{}/checkpoints/step-00000099",
            other.path().file_name().unwrap().to_str().unwrap()
        );
        for latest in
            ["x\n", "", "step-00000009", "step-00000004/../step-00000006", escape.as_str(), "/etc"]
        {
            fs::write(store.dir.join("latest"), latest).unwrap();
            assert_eq!(
                store.latest(),
                Some(store.dir.join("step-00000006")),
                "latest = {latest:?}"
            );
            assert_eq!(load(dir.path()).unwrap().state.step, 6, "latest = {latest:?}");
        }
        fs::remove_file(store.dir.join("latest")).unwrap();
        assert_eq!(load(dir.path()).unwrap().state.step, 6, "no latest at all");
        // an incomplete newest directory is passed over
        fs::remove_file(store.dir.join("step-00000006/state.json")).unwrap();
        assert_eq!(store.latest(), Some(store.dir.join("step-00000004")));
    }

    #[test]
    fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        fs::write(&p, b"garbage").unwrap();
        fs::write(dir.path().join("state.json"), b"{}").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("model.safetensors"), "{e:#}");
    }
}
