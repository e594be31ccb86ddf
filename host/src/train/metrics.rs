//! `metrics.jsonl`: one JSON object per line, `"kind"` being `step`, `epoch` or `eval`.

use anyhow::{Context as _, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends records to a run's `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    /// None: a rank other than 0 of a data-parallel run, which writes nothing.
    out: Option<BufWriter<File>>,
}

impl MetricsLog {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { path, out: Some(BufWriter::new(f)) })
    }

    /// A log that writes nothing (ranks other than 0 of a data-parallel run).
    pub fn discard(dir: &Path) -> MetricsLog {
        MetricsLog { path: dir.join("metrics.jsonl"), out: None }
    }

    /// Writes one record of `kind` with the given fields.
    pub fn write(&mut self, kind: &str, fields: Map<String, Value>) -> Result<()> {
        let mut obj = Map::new();
        obj.insert("kind".into(), kind.into());
        obj.extend(fields);
        let Some(out) = &mut self.out else { return Ok(()) };
        writeln!(out, "{}", Value::Object(obj))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Drops the records of steps after `step` (logged before a fault or a kill, and done again
    /// on resume) and any torn line, so that each step is logged once; later records go to the
    /// repaired file. With `mid_epoch` (the checkpoint was taken inside an epoch, whose end will
    /// run again), the epoch and eval records of `step` itself go too.
    pub fn drop_after(&mut self, step: u64, mid_epoch: bool) -> Result<()> {
        if self.out.is_none() {
            return Ok(());
        }
        self.flush()?;
        let Ok(text) = std::fs::read_to_string(&self.path) else { return Ok(()) };
        let keep: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|r| {
                    let s = r.get("step").and_then(Value::as_u64);
                    let is_step = r.get("kind").and_then(Value::as_str) == Some("step");
                    s.is_none_or(|s| s < step || (s == step && (is_step || !mid_epoch)))
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if keep != text {
            super::checkpoint::write_atomic(&self.path, keep.as_bytes())
                .with_context(|| format!("cannot rewrite {}", self.path.display()))?;
            // the rename replaced the file this log appended to: append to the new one
            let dir = self.path.parent().unwrap_or(Path::new("."));
            *self = MetricsLog::open(dir)?;
        }
        Ok(())
    }

    /// Σ and count of the `loss` of the step records of `epoch` up to `step`.
    pub fn epoch_losses(&self, epoch: u64, step: u64) -> (f64, u64) {
        read(&self.path)
            .unwrap_or_default()
            .iter()
            .filter(|r| {
                r["kind"] == "step"
                    && r["epoch"].as_u64() == Some(epoch)
                    && r["step"].as_u64().is_some_and(|s| s <= step)
            })
            .filter_map(|r| r["loss"].as_f64())
            .fold((0.0, 0), |(s, n), l| (s + l, n + 1))
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<()> {
        let Some(out) = &mut self.out else { return Ok(()) };
        out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every record of a `metrics.jsonl` (skipping a torn last line).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
