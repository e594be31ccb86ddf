//! The evaluation report: kNN at each configured (k, T) and a linear probe for the trained
//! encoder, beside two baselines (the same encoder at random initialisation, and raw pixels),
//! as a table or JSON.

use crate::config::{Config, EvalConfig};
use crate::data::Dataset;
use crate::eval;
use crate::plugins::{Encoder, Registry};
use crate::train::learner::build_encoder;
use anyhow::{bail, Result};
use latent_sdk::kit::Tensor;
use serde::Serialize;

/// One method's figures.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    /// What was evaluated.
    pub method: String,
    /// (k, T, top-1 accuracy) per kNN setting.
    pub knn: Vec<(usize, f32, f64)>,
    /// Linear-probe top-1 accuracy.
    pub linear_probe: Option<f64>,
    /// Feature dimension.
    pub dim: usize,
}

/// The whole report.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// The memory bank's (and probe's training) split, e.g. `mnist-5k/train`.
    pub dataset: String,
    /// The query split, e.g. `mnist-5k/test`.
    pub queries: String,
    /// Memory-bank (train) and query (test) sizes.
    pub train_size: usize,
    /// Test size.
    pub test_size: usize,
    /// Trained encoder, then the baselines.
    pub rows: Vec<Row>,
}

/// Encoder features of every image of `ds` in evaluation mode, `[N, D]` flattened.
pub fn features(enc: &mut Encoder, ds: &Dataset) -> Result<(Vec<f32>, usize)> {
    let [c, h, w] = ds.shape;
    let per = c * h * w;
    let mut out = Vec::new();
    let mut dim = 0;
    for start in (0..ds.len()).step_by(256) {
        let end = (start + 256).min(ds.len());
        let data: Vec<f32> =
            ds.images[start * per..end * per].iter().map(|&b| b as f32 / 255.0).collect();
        let f = enc.forward(Tensor::new(vec![end - start, c, h, w], data), false)?;
        dim = f.shape[1];
        out.extend_from_slice(&f.data);
    }
    Ok((out, dim))
}

/// Raw pixels in [0, 1] as features.
pub fn pixels(ds: &Dataset) -> Vec<f32> {
    ds.images.iter().map(|&b| b as f32 / 255.0).collect()
}

/// Number of classes of a labelled pair of splits.
pub fn num_classes(train: &Dataset, test: &Dataset) -> usize {
    let m = train.labels.iter().chain(&test.labels).copied().max().unwrap_or(0);
    (m as usize + 1).max(train.classes.len())
}

/// kNN (and optionally the probe) for one set of features.
#[allow(clippy::too_many_arguments)]
pub fn row(
    method: &str,
    tr: &[f32],
    tr_y: &[i64],
    te: &[f32],
    te_y: &[i64],
    d: usize,
    classes: usize,
    cfg: &EvalConfig,
    probe: bool,
) -> Row {
    let knn = cfg
        .knn
        .iter()
        .map(|&(k, t)| (k, t, eval::knn_accuracy(tr, tr_y, te, te_y, d, k, t, classes)))
        .collect();
    let linear_probe =
        probe.then(|| eval::linear_probe(tr, tr_y, te, te_y, d, classes, cfg.probe_steps));
    Row { method: method.to_string(), knn, linear_probe, dim: d }
}

/// The full report for a trained encoder: itself, random init, raw pixels.
pub fn full(
    reg: &Registry,
    cfg: &Config,
    trained: &mut Encoder,
    method: &str,
    train: &Dataset,
    test: &Dataset,
) -> Result<Report> {
    if train.labels.is_empty() || test.labels.is_empty() {
        bail!("evaluation needs labels, but dataset '{}' has none", train.name);
    }
    let classes = num_classes(train, test);
    let probe = cfg.eval.linear_probe;
    let mut rows = Vec::new();
    let (tr, d) = features(trained, train)?;
    let (te, _) = features(trained, test)?;
    rows.push(row(method, &tr, &train.labels, &te, &test.labels, d, classes, &cfg.eval, probe));
    let (mut random, _) = build_encoder(reg, cfg, train.shape)?;
    let (tr, d) = features(&mut random, train)?;
    let (te, _) = features(&mut random, test)?;
    rows.push(row(
        "random init",
        &tr,
        &train.labels,
        &te,
        &test.labels,
        d,
        classes,
        &cfg.eval,
        probe,
    ));
    let d = train.shape.iter().product();
    rows.push(row(
        "raw pixels",
        &pixels(train),
        &train.labels,
        &pixels(test),
        &test.labels,
        d,
        classes,
        &cfg.eval,
        probe,
    ));
    Ok(Report {
        dataset: train.name.clone(),
        queries: test.name.clone(),
        train_size: train.len(),
        test_size: test.len(),
        rows,
    })
}

impl Report {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "evaluation: queries {} ({} images) against the memory bank / probe training set {} ({} images)\n",
            self.queries, self.test_size, self.dataset, self.train_size
        );
        let Some(first) = self.rows.first() else { return s };
        let mut header = format!("{:<24}", "method");
        for (k, t, _) in &first.knn {
            header += &format!(" {:>14}", format!("kNN@{k} (T={t})"));
        }
        header += &format!(" {:>13}", "linear probe");
        s += &header;
        s += "\n";
        for r in &self.rows {
            let mut line = format!("{:<24}", r.method);
            for (_, _, a) in &r.knn {
                line += &format!(" {:>13.2}%", a * 100.0);
            }
            match r.linear_probe {
                Some(p) => line += &format!(" {:>12.2}%", p * 100.0),
                None => line += &format!(" {:>13}", "-"),
            }
            s += &line;
            s += "\n";
        }
        s
    }
}
