//! `latent neighbours RUN --out neighbours.png`: query images from the test split, each beside
//! its nearest neighbours (cosine similarity of encoder features, as kNN uses) in the memory
//! bank (the training split) under the trained encoder. A neighbour of the query's class has a
//! green frame, one of another class a red one. `neighbours.json` beside the PNG lists every
//! query and neighbour with its label and similarity.

use crate::data;
use crate::eval::{self, commands as evaluate, report};
use crate::inspect::grid::{self, Row, Tile, RIGHT, WRONG};
use crate::inspect::{check_png_path, json_path};
use crate::plugins::Registry;
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;
use std::path::PathBuf;

/// What `latent neighbours` is asked.
#[derive(Clone, Debug)]
pub struct NeighboursArgs {
    /// Run directory, checkpoint directory or model.safetensors.
    pub run: PathBuf,
    /// Another dataset (same sources as `data.source`).
    pub data: Option<String>,
    /// The PNG to write.
    pub out: PathBuf,
    /// Query images, spread evenly over the test split.
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Enlargement of each pixel.
    pub scale: u32,
}

/// One neighbour.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Neighbour {
    /// Index in the memory bank (training split).
    pub index: usize,
    /// Its label.
    pub label: Option<i64>,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// One query and its neighbours, most similar first.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Query {
    /// Index in the test split.
    pub index: usize,
    /// Its label.
    pub label: Option<i64>,
    /// Nearest first.
    pub neighbours: Vec<Neighbour>,
}

/// `neighbours.json`.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    /// The memory bank's split.
    pub memory_bank: String,
    /// The queries' split.
    pub queries_from: String,
    /// Share of the neighbours shown that have the query's class.
    pub precision: Option<f64>,
    /// Size of the PNG.
    pub png: (u32, u32),
    /// The queries.
    pub queries: Vec<Query>,
}

/// The `k` rows of `bank` (`[N, d]`, L2-normalized) most similar to `q` (normalized), most
/// similar first; ties go to the lower index.
pub fn nearest(bank: &[f32], d: usize, q: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut s: Vec<(usize, f32)> = bank
        .chunks_exact(d)
        .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
        .enumerate()
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

/// `n` query indices out of `len` images: with labels, round-robin over the classes (the first
/// image of each class, then the second, ...), so that every class is asked about even when the
/// split is sorted by class; without, evenly spaced.
pub fn spread(labels: &[i64], len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    if labels.len() != len || labels.is_empty() {
        return (0..n).map(|i| i * len / n).collect();
    }
    let mut by_class = std::collections::BTreeMap::<i64, std::collections::VecDeque<usize>>::new();
    labels.iter().enumerate().for_each(|(i, &l)| by_class.entry(l).or_default().push_back(i));
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        for q in by_class.values_mut() {
            if let Some(i) = q.pop_front() {
                if out.len() < n {
                    out.push(i);
                }
            }
        }
    }
    out
}

/// Runs `latent neighbours`.
pub fn run(reg: &Registry, args: &NeighboursArgs) -> Result<Summary> {
    check_png_path(&args.out)?;
    ensure!((1..=64).contains(&args.queries), "--queries must be 1 to 64, got {}", args.queries);
    ensure!((1..=32).contains(&args.k), "--k must be 1 to 32, got {}", args.k);
    ensure!((1..=16).contains(&args.scale), "--scale must be 1 to 16, got {}", args.scale);
    let mut cfg = evaluate::run_config(&args.run)?;
    if let Some(s) = &args.data {
        cfg.data.source = s.clone();
    }
    let splits = crate::data::open_data(&cfg)?;
    let (train, test) = (
        &splits.train,
        splits.test.as_ref().with_context(|| {
            format!("{} has no test split to take queries from", cfg.data.source)
        })?,
    );
    let mut enc = evaluate::load_encoder(reg, &cfg, &args.run, train.shape)?;
    let (mut bank, d) = report::features(&mut enc, train)?;
    let (mut te, _) = report::features(&mut enc, test)?;
    eval::normalize_rows(&mut bank, d);
    eval::normalize_rows(&mut te, d);
    let n = args.queries.min(test.len());
    let picks = spread(&test.labels, test.len(), n);
    let name = |ds: &data::Dataset, l: Option<i64>| {
        l.map(|l| ds.classes.get(l as usize).cloned().unwrap_or_else(|| l.to_string()))
    };
    let (mut rows, mut queries, mut right, mut shown) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for &qi in &picks {
        let ql = test.labels.get(qi).copied();
        let near = nearest(&bank, d, &te[qi * d..(qi + 1) * d], args.k.min(train.len()));
        let img = |ds: &data::Dataset, i: usize| data::loader::decode(ds, &[i]).data;
        let mut tiles = vec![Tile {
            shape: test.shape,
            pixels: img(test, qi),
            caption: name(test, ql).map_or("query".into(), |c| format!("query: {c}")),
            frame: None,
        }];
        let mut ns = Vec::new();
        for &(bi, s) in &near {
            let bl = train.labels.get(bi).copied();
            let frame = match (ql, bl) {
                (Some(a), Some(b)) => {
                    shown += 1;
                    right += usize::from(a == b);
                    Some(if a == b { RIGHT } else { WRONG })
                }
                _ => None,
            };
            let caption = match name(train, bl) {
                Some(c) => format!("{c} ({s:.3})"),
                None => format!("{s:.3}"),
            };
            tiles.push(Tile {
                shape: train.shape,
                pixels: img(train, bi),
                caption: caption.trim_start().to_string(),
                frame,
            });
            ns.push(Neighbour { index: bi, label: bl, similarity: s });
        }
        rows.push(Row { label: format!("#{qi}"), tiles });
        queries.push(Query { index: qi, label: ql, neighbours: ns });
    }
    let precision = (shown > 0).then(|| right as f64 / shown as f64);
    let columns: Vec<String> = std::iter::once("query".to_string())
        .chain((1..=args.k.min(train.len())).map(|i| format!("{i}.")))
        .collect();
    let title = format!(
        "nearest neighbours in {} ({} images) of {} queries from {}{}",
        train.name,
        train.len(),
        n,
        test.name,
        precision.map_or(String::new(), |p| format!(
            ": {:.0}% of the class (red: another class)",
            p * 100.0
        ))
    );
    let (png, _) = grid::draw(&args.out, &title, &columns, &rows, args.scale)?;
    let summary = Summary {
        memory_bank: train.name.clone(),
        queries_from: test.name.clone(),
        precision,
        png,
        queries,
    };
    let json = json_path(&args.out);
    std::fs::write(&json, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_is_by_cosine_most_similar_first() {
        let bank = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8, -1.0, 0.0];
        let got = nearest(&bank, 2, &[0.8, 0.6], 3);
        let idx: Vec<usize> = got.iter().map(|p| p.0).collect();
        assert_eq!(idx, [2, 0, 1]);
        for ((_, s), want) in got.iter().zip([0.96, 0.8, 0.6]) {
            assert!((s - want).abs() < 1e-6, "{s} against {want}");
        }
        assert_eq!(
            nearest(&[1.0, 0.0, 1.0, 0.0], 2, &[1.0, 0.0], 1),
            vec![(0, 1.0)],
            "a tie goes to the lower index"
        );
    }

    #[test]
    fn queries_cover_every_class_of_a_sorted_split() {
        let labels = [0, 0, 0, 1, 1, 2];
        assert_eq!(spread(&labels, 6, 4), [0, 3, 5, 1]);
        assert_eq!(spread(&labels, 6, 9), [0, 3, 5, 1, 4, 2], "at most every image once");
        assert_eq!(spread(&[], 10, 5), [0, 2, 4, 6, 8]);
    }
}
