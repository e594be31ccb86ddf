//! What a run logs about its encoder after every epoch: the collapse monitor (embedding
//! std·√d and effective rank) and, every `eval.every_epochs`, kNN accuracy and the linear probe.

use super::learner::Learner;
use super::metrics::MetricsLog;
use crate::config::Config;
use crate::data::Dataset;
use crate::eval::{self, report};
use anyhow::Result;
use serde_json::{json, Map};

/// The collapse monitor (every epoch: embedding std·√d and effective rank on the test split,
/// or on up to 1,000 training images without one) and, when `knn`, kNN accuracy (and the
/// probe) on the test split with the training split as memory bank, or the figures of `known`
/// (the final report's row); logged as an `eval` record.
#[allow(clippy::too_many_arguments)]
pub fn online_eval(
    learner: &mut Learner,
    cfg: &Config,
    train: &Dataset,
    test: Option<&Dataset>,
    epoch: u64,
    step: u64,
    knn: bool,
    known: Option<&report::Row>,
    log: &mut MetricsLog,
) -> Result<()> {
    let probe_set = match test {
        Some(t) => t.clone(),
        None => {
            let mut t = train.clone();
            t.truncate(1000);
            t
        }
    };
    let (te, d) = report::features(&mut learner.encoder, &probe_set)?;
    let mut f = Map::new();
    f.insert("epoch".into(), json!(epoch));
    f.insert("step".into(), json!(step));
    let std = eval::collapse_std(&te, d);
    let rank = eval::effective_rank(&te, d);
    f.insert("collapse_std".into(), json!(std));
    f.insert("effective_rank".into(), json!(rank));
    f.insert("dim".into(), json!(d));
    let mut line = format!(
        "after epoch {epoch}: embedding std·√d {std:.3}, effective rank {rank:.1} (of {d})"
    );
    if let Some(row) = known {
        for &(k, _, acc) in &row.knn {
            f.insert(format!("knn_{k}"), json!(acc));
            line += &format!("; kNN@{k} {:.2}%", acc * 100.0);
        }
        if let Some(acc) = row.linear_probe {
            f.insert("probe".into(), json!(acc));
            line += &format!("; linear probe {:.2}%", acc * 100.0);
        }
    } else if let (true, Some(test)) = (knn, test) {
        if !train.labels.is_empty() && !test.labels.is_empty() {
            let (tr, _) = report::features(&mut learner.encoder, train)?;
            let classes = report::num_classes(train, test);
            for &(k, t) in &cfg.eval.knn {
                let acc =
                    eval::knn_accuracy(&tr, &train.labels, &te, &test.labels, d, k, t, classes);
                f.insert(format!("knn_{k}"), json!(acc));
                line += &format!("; kNN@{k} {:.2}%", acc * 100.0);
            }
            if cfg.eval.linear_probe {
                let acc = eval::linear_probe(
                    &tr,
                    &train.labels,
                    &te,
                    &test.labels,
                    d,
                    classes,
                    cfg.eval.probe_steps,
                );
                f.insert("probe".into(), json!(acc));
                line += &format!("; linear probe {:.2}%", acc * 100.0);
            }
        }
    }
    tracing::info!("{line}");
    log.write("eval", f)
}
