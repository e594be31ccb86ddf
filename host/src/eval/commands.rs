//! `latent eval` and `latent embed`: a trained encoder from a run or checkpoint, on any dataset.

use crate::config::Config;
use crate::data;
use crate::eval::report;
use crate::plugins::{Encoder, Registry};
use crate::train::checkpoint;
use crate::train::learner::{build_encoder, load_module};
use anyhow::{bail, Context as _, Result};
use npyz::WriterBuilder;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The run's config for a run directory, a checkpoint directory or a `model.safetensors`.
pub fn run_config(path: &Path) -> Result<Config> {
    if path.is_file() && path.file_name().and_then(|n| n.to_str()) != Some("model.safetensors") {
        bail!("{} is not a checkpoint: give a run directory, a checkpoint directory (RUN/checkpoints/step-N) or its model.safetensors", path.display());
    }
    let ck = checkpoint::resolve(path)?;
    // RUN/checkpoints/step-N  →  RUN/config.toml
    let candidates = [
        ck.join("config.toml"),
        ck.parent().and_then(Path::parent).map(|r| r.join("config.toml")).unwrap_or_default(),
        path.join("config.toml"),
    ];
    let looked: Vec<String> = candidates
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string())
        .collect();
    let file = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!("no config.toml found for {} (looked for {})", path.display(), looked.join(", "))
    })?;
    Config::load(Some(file), &[])
}

/// Loads the trained online encoder of a run or checkpoint, for images of `shape`.
pub fn load_encoder(
    reg: &Registry,
    cfg: &Config,
    path: &Path,
    shape: [usize; 3],
) -> Result<Encoder> {
    let ck = checkpoint::load(path)?;
    let (mut enc, _) = build_encoder(reg, cfg, shape)?;
    let descs = crate::plugins::ParamAccess::params(&mut enc)?;
    load_module(&mut enc, &descs, "encoder", &ck.tensors)
        .with_context(|| format!("loading the encoder from {}", path.display()))?;
    Ok(enc)
}

/// `latent eval`.
pub fn eval(reg: &Registry, path: &Path, source: Option<&str>, json: bool) -> Result<()> {
    let mut cfg = run_config(path)?;
    if let Some(s) = source {
        cfg.data.source = s.to_string();
    }
    let splits = crate::data::open_data(&cfg)?;
    let test = splits
        .test
        .as_ref()
        .with_context(|| format!("{} has no test split to evaluate on", cfg.data.source))?;
    let mut enc = load_encoder(reg, &cfg, path, splits.train.shape)?;
    let method = format!("{} ({})", cfg.objective.plugin, cfg.encoder.plugin);
    let rep = report::full(reg, &cfg, &mut enc, &method, &splits.train, test)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", rep.table());
    }
    Ok(())
}

/// Writes an `[n, d]` f32 array as `.npy`.
pub fn write_npy_f32(path: &Path, data: &[f32], shape: &[u64]) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let write = || -> Result<()> {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(BufWriter::new(f))
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        Ok(w.finish()?)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Writes an i64 vector as `.npy`.
pub fn write_npy_i64(path: &Path, data: &[i64]) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let write = || -> Result<()> {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[data.len() as u64])
            .writer(BufWriter::new(f))
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        Ok(w.finish()?)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The labels file written beside `FILE.npy`: `FILE.labels.npy`.
pub fn labels_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("features");
    out.with_file_name(format!("{stem}.labels.npy"))
}

/// `latent embed`: features of a split as `.npy`, labels beside them.
pub fn embed(
    reg: &Registry,
    path: &Path,
    source: Option<&str>,
    split: &str,
    out: &Path,
) -> Result<(usize, usize)> {
    if out.extension().and_then(|e| e.to_str()) != Some("npy") {
        bail!("--out {} must be a .npy file (it would overwrite whatever is there)", out.display());
    }
    let mut cfg = run_config(path)?;
    if let Some(s) = source {
        cfg.data.source = s.to_string();
    }
    let splits = crate::data::open_data(&cfg)?;
    let mut parts: Vec<&data::Dataset> = Vec::new();
    match split {
        "train" => parts.push(&splits.train),
        "test" => parts.push(
            splits
                .test
                .as_ref()
                .with_context(|| format!("{} has no test split", cfg.data.source))?,
        ),
        "all" => {
            parts.push(&splits.train);
            parts.extend(splits.test.as_ref());
        }
        other => bail!("--split must be train, test or all, got {other:?}"),
    }
    let mut enc = load_encoder(reg, &cfg, path, splits.train.shape)?;
    let (mut feats, mut labels, mut dim) = (Vec::new(), Vec::new(), 0);
    for p in parts {
        let (f, d) = report::features(&mut enc, p)?;
        feats.extend(f);
        labels.extend(p.labels.iter().copied());
        dim = d;
    }
    let n = feats.len() / dim.max(1);
    write_npy_f32(out, &feats, &[n as u64, dim as u64])?;
    if !labels.is_empty() {
        write_npy_i64(&labels_path(out), &labels)?;
    }
    Ok((n, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_roundtrip_has_the_right_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_npy_f32(&p, &data, &[3, 4]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
        assert_eq!(arr.shape(), &[3, 4]);
        let back: Vec<f32> = arr.into_vec().unwrap();
        assert_eq!(back, data);
        write_npy_i64(&labels_path(&p), &[1, 2, 3]).unwrap();
        let bytes = std::fs::read(dir.path().join("f.labels.npy")).unwrap();
        let back: Vec<i64> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
        assert_eq!(back, vec![1, 2, 3]);
    }
}
