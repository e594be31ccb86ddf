//! The run's own plots, redrawn from `metrics.jsonl` and `eval.json` after every evaluation
//! and at the end:
//! - `loss.png`: the training loss per step (and its moving average); the learning rate below;
//!   BYOL's target momentum τ in a third panel when it moves.
//! - `eval.png`: kNN@k and the linear probe at every evaluation, with the final report's
//!   random-init and raw-pixel figures as dashed levels; the collapse monitor (embedding
//!   std·√d and effective rank / d) below.
//!
//! Both have the step axis below and an epoch axis along the top. [`loss_figure`] and
//! [`eval_figure`] return what is drawn, so tests compare it with the run's records.

use crate::inspect::plot::{self, Figure, Panel, Series};
use anyhow::Result;
use serde_json::Value;
use std::path::Path;

fn get(r: &Value, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Steps per epoch: the most step records that any one epoch has.
pub fn steps_per_epoch(records: &[Value]) -> Option<f64> {
    let mut counts = std::collections::BTreeMap::<u64, u64>::new();
    for r in of_kind(records, "step") {
        *counts.entry(r["epoch"].as_u64().unwrap_or(0)).or_default() += 1;
    }
    counts.values().max().map(|&n| n as f64)
}

fn series(records: &[&Value], name: &str, key: &str) -> Series {
    Series::line(
        name,
        records.iter().filter_map(|r| Some((get(r, "step")?, get(r, key)?))).collect(),
    )
}

/// `loss.png`: loss and its moving average; the learning rate; τ when it moves.
pub fn loss_figure(records: &[Value]) -> Figure {
    let steps = of_kind(records, "step");
    let loss = series(&steps, "loss", "loss");
    let w = loss.points.len() / 50;
    let mut curves = vec![];
    if w >= 2 {
        curves.push(Series::line(
            format!("moving average ({w} steps)"),
            plot::smooth(&loss.points, w),
        ));
    }
    curves.insert(0, loss);
    let mut panels = vec![
        Panel { title: "training loss".into(), y_label: "loss".into(), series: curves },
        Panel {
            title: "learning rate".into(),
            y_label: "lr".into(),
            series: vec![series(&steps, "learning rate", "lr")],
        },
    ];
    let tau = series(&steps, "target momentum τ", "tau");
    if tau.points.windows(2).any(|w| w[0].1 != w[1].1) {
        panels.push(Panel {
            title: "target momentum τ (EMA)".into(),
            y_label: "τ".into(),
            series: vec![tau],
        });
    }
    Figure { x_label: "step".into(), steps_per_epoch: steps_per_epoch(records), panels }
}

/// `eval.png`: accuracies at every evaluation with the baselines of `report` (the run's
/// `eval.json`); the collapse monitor below.
pub fn eval_figure(records: &[Value], report: Option<&Value>) -> Figure {
    let evals = of_kind(records, "eval");
    let last_step = of_kind(records, "step")
        .last()
        .and_then(|r| get(r, "step"))
        .or_else(|| evals.last().and_then(|r| get(r, "step")))
        .unwrap_or(0.0);
    // kNN runs every `eval.every_epochs`, so the first records may lack it: keys from all
    let mut ks: Vec<u64> = evals
        .iter()
        .filter_map(|r| r.as_object())
        .flat_map(|o| o.keys().filter_map(|k| k.strip_prefix("knn_")?.parse().ok()))
        .collect();
    ks.sort_by(|a, b| b.cmp(a));
    ks.dedup();
    let mut acc: Vec<Series> =
        ks.iter().map(|k| series(&evals, &format!("kNN@{k}"), &format!("knn_{k}"))).collect();
    let probe = series(&evals, "linear probe", "probe");
    if !probe.points.is_empty() {
        acc.push(probe);
    }
    for row in report.and_then(|r| r["rows"].as_array()).into_iter().flatten().skip(1) {
        let Some(name) = row["method"].as_str() else { continue };
        if let (Some(k), Some(a)) = (row["knn"][0][0].as_u64(), row["knn"][0][2].as_f64()) {
            acc.push(Series::level(format!("{name}: kNN@{k}"), a, 0.0, last_step));
        }
        if let Some(p) = row["linear_probe"].as_f64() {
            acc.push(Series::level(format!("{name}: probe"), p, 0.0, last_step));
        }
    }
    let queries = report
        .and_then(|r| r["queries"].as_str())
        .map_or("the test split".to_string(), str::to_string);
    let d = evals.iter().find_map(|r| r["dim"].as_u64());
    let rank_name = d.map_or("effective rank / d".to_string(), |d| format!("effective rank / {d}"));
    let mut rank = series(&evals, &rank_name, "effective_rank");
    if let Some(d) = d {
        rank.points.iter_mut().for_each(|p| p.1 /= d as f64);
    }
    Figure {
        x_label: "step".into(),
        steps_per_epoch: steps_per_epoch(records),
        panels: vec![
            Panel {
                title: format!("top-1 accuracy on {queries}"),
                y_label: "accuracy".into(),
                series: acc,
            },
            Panel {
                title: "collapse monitor (1: spread over all dimensions, 0: collapsed)".into(),
                y_label: "fraction".into(),
                series: vec![series(&evals, "embedding std·√d", "collapse_std"), rank],
            },
        ],
    }
}

/// Writes `loss.png` and `eval.png` into the run directory `out`.
pub fn write(out: &Path) -> Result<()> {
    let records = crate::train::metrics::read(&out.join("metrics.jsonl"))?;
    let report = std::fs::read_to_string(out.join("eval.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    plot::figure(&out.join("loss.png"), &loss_figure(&records))?;
    plot::figure(&out.join("eval.png"), &eval_figure(&records, report.as_ref()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eval_png_has_the_accuracies_of_every_evaluation_the_baselines_and_the_collapse_panel() {
        // regression: kNN came only from the keys of the first eval record, which has none when
        // kNN runs every 5 epochs, so eval.png drew the embedding std alone
        let mut records: Vec<Value> = (1..=150).map(|s| json!({"kind": "step", "step": s, "epoch": (s - 1) / 15, "loss": 6.0, "lr": 0.06, "tau": 1.0})).collect();
        records.extend([
            json!({"kind": "eval", "step": 15, "dim": 128, "collapse_std": 0.2, "effective_rank": 64.0}),
            json!({"kind": "eval", "step": 75, "dim": 128, "collapse_std": 0.3, "effective_rank": 32.0, "knn_200": 0.6, "knn_20": 0.7, "probe": 0.9}),
            json!({"kind": "eval", "step": 150, "dim": 128, "collapse_std": 0.3, "effective_rank": 16.0, "knn_200": 0.65, "knn_20": 0.75, "probe": 0.92}),
        ]);
        let report = json!({"queries": "mnist-5k/test", "rows": [
            {"method": "simclr (resnet)", "knn": [[200, 0.1, 0.65]], "linear_probe": 0.92},
            {"method": "random init", "knn": [[200, 0.1, 0.53]], "linear_probe": 0.85},
            {"method": "raw pixels", "knn": [[200, 0.1, 0.907]], "linear_probe": null},
        ]});
        let f = eval_figure(&records, Some(&report));
        assert_eq!(f.steps_per_epoch, Some(15.0));
        assert_eq!(f.panels[0].title, "top-1 accuracy on mnist-5k/test");
        let names: Vec<&str> = f.panels[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kNN@200",
                "kNN@20",
                "linear probe",
                "random init: kNN@200",
                "random init: probe",
                "raw pixels: kNN@200"
            ]
        );
        assert_eq!(f.panels[0].series[0].points, vec![(75.0, 0.6), (150.0, 0.65)]);
        assert_eq!(f.panels[0].series[2].points, vec![(75.0, 0.9), (150.0, 0.92)]);
        assert_eq!(f.panels[0].series[5].points, vec![(0.0, 0.907), (150.0, 0.907)]);
        assert!(f.panels[0].series[5].dashed && !f.panels[0].series[0].dashed);
        assert_eq!(f.panels[1].series[1].name, "effective rank / 128");
        assert_eq!(f.panels[1].series[1].points, vec![(15.0, 0.5), (75.0, 0.25), (150.0, 0.125)]);
        // τ does not move for SimCLR: no third panel in loss.png
        let l = loss_figure(&records);
        assert_eq!(l.panels.len(), 2);
        assert_eq!(l.panels[1].series[0].points.len(), 150);
        records[3]["tau"] = json!(0.99);
        assert_eq!(loss_figure(&records).panels.len(), 3);
    }
}
