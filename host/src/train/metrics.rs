//! `metrics.jsonl`: one JSON object per line, `"kind"` being `step`, `epoch` or `eval`.

use anyhow::{Context as _, Result};
use serde_json::{Map, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Appends records to a run's `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
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
        Ok(MetricsLog { path, out: BufWriter::new(f) })
    }

    /// Writes one record of `kind` with the given fields.
    pub fn write(&mut self, kind: &str, fields: Map<String, Value>) -> Result<()> {
        let mut obj = Map::new();
        obj.insert("kind".into(), kind.into());
        obj.extend(fields);
        writeln!(self.out, "{}", Value::Object(obj))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Flushes to disk.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every record of a `metrics.jsonl` (skipping a torn last line).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
