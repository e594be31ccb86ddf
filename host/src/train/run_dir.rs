//! The run directory: where a run goes by default, how it is claimed (marked, proven writable,
//! locked) before any training, and the config's identity (its hash, and which keys changed).

use super::checkpoint::{self, Store};
use crate::config::Config;
use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// SHA-256 of the config's TOML text.
pub fn config_hash(cfg: &Config) -> Result<String> {
    Ok(text_hash(&cfg.to_toml()?))
}

pub fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub fn default_out(cfg: &Config) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
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
pub fn prepare_out(out: &Path, resume: bool) -> Result<RunLock> {
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
        bail!(
            "{}: no run to resume (no {RUN_MARKER}, config.toml or checkpoints there)",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the run directory {}", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("the run directory {} is not writable", out.display()))?;
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
        for f in
            ["metrics.jsonl", "eval.json", "loss.png", "eval.png", "collapse.png", "config.toml"]
        {
            let _ = std::fs::remove_file(out.join(f));
        }
        tracing::warn!(
            "{}: the earlier attempt there left no checkpoint; starting the run afresh",
            out.display()
        );
    }
    checkpoint::write_atomic(
        &out.join(RUN_MARKER),
        format!("latent run directory, ABI {}\n", latent_abi::ABI_VERSION).as_bytes(),
    )?;
    Ok(lock)
}

/// The dotted keys whose values differ between two config TOML texts (at most 10).
pub fn config_diff(a: &str, b: &str) -> Vec<String> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| {
                flat(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)
            }),
            v => {
                out.insert(prefix.to_string(), v.to_string());
            }
        }
    }
    let (mut fa, mut fb) = (Default::default(), Default::default());
    let (Ok(ta), Ok(tb)) = (a.parse::<toml::Table>(), b.parse::<toml::Table>()) else {
        return vec![];
    };
    flat("", &toml::Value::Table(ta), &mut fa);
    flat("", &toml::Value::Table(tb), &mut fb);
    let keys: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    keys.into_iter().filter(|k| fa.get(*k) != fb.get(*k)).take(10).cloned().collect()
}
