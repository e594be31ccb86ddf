//! `latent runs [DIR]`: a table of the runs under a directory (default `runs/`, up to three
//! levels down): method, encoder, data, steps, kNN, probe, training time and whether the run
//! finished, stopped (resumable) or is running now. Read from each run's `config.toml`,
//! `metrics.jsonl`, `eval.json` and `.lock`; nothing is written.

use crate::config::Config;
use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One run.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RunRow {
    /// The run directory.
    pub dir: PathBuf,
    /// Objective plugin.
    pub method: String,
    /// Encoder plugin (and its preset, when it has one).
    pub encoder: String,
    /// `data.source`.
    pub data: String,
    /// Steps done (the last step logged).
    pub steps: u64,
    /// `(k, accuracy)` of the first kNN setting: the final report's, else the last evaluation's.
    pub knn: Option<(u64, f64)>,
    /// Linear probe of the final report (or of the last evaluation).
    pub probe: Option<f64>,
    /// Training seconds (the epochs' times, evaluation excluded).
    pub train_seconds: f64,
    /// `finished`, `running`, `stopped` or `no steps`.
    pub status: String,
    /// Why the row is incomplete, when a file could not be read.
    pub note: Option<String>,
}

/// A directory holds a run when it has the run marker, or a config.toml beside metrics.jsonl.
fn is_run(dir: &Path) -> bool {
    dir.join(crate::train::run_dir::RUN_MARKER).exists()
        || (dir.join("config.toml").is_file() && dir.join("metrics.jsonl").is_file())
}

/// The run directories under `root` (itself included), at most `depth` levels down, in the
/// order their `metrics.jsonl` was last written (oldest first).
pub fn find(root: &Path, depth: usize) -> Result<Vec<PathBuf>> {
    anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, level)) = stack.pop() {
        if is_run(&dir) {
            out.push(dir);
            continue;
        }
        if level >= depth {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), level + 1));
            }
        }
    }
    let mtime =
        |p: &PathBuf| std::fs::metadata(p.join("metrics.jsonl")).and_then(|m| m.modified()).ok();
    out.sort_by(|a, b| mtime(a).cmp(&mtime(b)).then(a.cmp(b)));
    Ok(out)
}

/// Whether a live latent process holds the run's lock (the pid it wrote is alive and is latent).
fn running(dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(".lock")) else { return false };
    let Ok(pid) = pid.trim().parse::<u32>() else { return false };
    if pid == std::process::id() {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("latent"))
}

/// Reads one run.
pub fn row(dir: &Path) -> RunRow {
    let mut r = RunRow {
        dir: dir.to_path_buf(),
        method: "?".into(),
        encoder: "?".into(),
        data: "?".into(),
        steps: 0,
        knn: None,
        probe: None,
        train_seconds: 0.0,
        status: String::new(),
        note: None,
    };
    match Config::load(Some(&dir.join("config.toml")), &[]) {
        Ok(cfg) => {
            r.method = cfg.objective.plugin.clone();
            r.encoder = match cfg.encoder.config.get("preset").and_then(Value::as_str) {
                Some(p) => format!("{} {p}", cfg.encoder.plugin),
                None => cfg.encoder.plugin.clone(),
            };
            r.data = cfg.data.source.clone();
        }
        Err(e) => r.note = Some(format!("config.toml: {e:#}")),
    }
    let records = crate::train::metrics::read(&dir.join("metrics.jsonl")).unwrap_or_default();
    r.steps = records
        .iter()
        .filter(|x| x["kind"] == "step")
        .filter_map(|x| x["step"].as_u64())
        .max()
        .unwrap_or(0);
    r.train_seconds =
        records.iter().filter(|x| x["kind"] == "epoch").filter_map(|x| x["seconds"].as_f64()).sum();
    let report = std::fs::read_to_string(dir.join("eval.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    if let Some(first) = report.as_ref().and_then(|v| v["rows"].get(0)) {
        r.knn = first["knn"][0][0].as_u64().zip(first["knn"][0][2].as_f64());
        r.probe = first["linear_probe"].as_f64();
    } else if let Some(last) = records.iter().rev().find(|x| {
        x["kind"] == "eval"
            && x.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("knn_")))
    }) {
        let o = last.as_object().expect("an object");
        // the first kNN setting is the largest k of the defaults; take the largest logged
        r.knn = o
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("knn_")?.parse::<u64>().ok()?, v.as_f64()?)))
            .max_by_key(|p| p.0);
        r.probe = last["probe"].as_f64();
    }
    r.status = if running(dir) {
        "running".into()
    } else if report.is_some() {
        "finished".into()
    } else if r.steps == 0 {
        "no steps".into()
    } else {
        "stopped".into()
    };
    r
}

/// The table.
pub fn table(rows: &[RunRow], root: &Path) -> String {
    let mut s = format!(
        "{:<36} {:<10} {:<20} {:<22} {:>6} {:>11} {:>7} {:>8}  {}\n",
        "run", "method", "encoder", "data", "steps", "kNN", "probe", "time", "status"
    );
    for r in rows {
        let name = r
            .dir
            .strip_prefix(root)
            .ok()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&r.dir)
            .display()
            .to_string();
        let knn = r.knn.map_or("-".into(), |(k, a)| format!("@{k} {:.1}%", a * 100.0));
        let probe = r.probe.map_or("-".into(), |p| format!("{:.1}%", p * 100.0));
        let time = if r.train_seconds >= 60.0 {
            format!("{}m{:02}s", (r.train_seconds / 60.0) as u64, r.train_seconds as u64 % 60)
        } else {
            format!("{:.0}s", r.train_seconds)
        };
        s += &format!(
            "{:<36} {:<10} {:<20} {:<22} {:>6} {:>11} {:>7} {:>8}  {}{}\n",
            crate::inspect::shorten(&name, 36),
            crate::inspect::shorten(&r.method, 10),
            crate::inspect::shorten(&r.encoder, 20),
            crate::inspect::shorten(&r.data, 22),
            r.steps,
            knn,
            probe,
            time,
            r.status,
            r.note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
        );
    }
    s
}

/// Runs `latent runs`: the rows of every run under `root`.
pub fn run(root: &Path) -> Result<Vec<RunRow>> {
    let dirs =
        find(root, 3).with_context(|| format!("listing the runs under {}", root.display()))?;
    Ok(dirs.iter().map(|d| row(d)).collect())
}
