//! FaceNet's triplet loss on L2-normalised embeddings, with three ways to mine triplets.
//!
//! - \[0\] FaceNet, Schroff et al. 2015, <https://arxiv.org/abs/1503.03832> (equations 1-3, section 3.2)
//! - \[1\] In Defense of the Triplet Loss, Hermans et al. 2017, <https://arxiv.org/abs/1703.07737> (batch-hard)
//!
//! ```text
//! u_i       = e_i / max(‖e_i‖, 1e-12)
//! d(i, k)   = ‖u_i − u_k‖²                                   squared Euclidean, in [0, 4]
//! ℓ(a,p,n)  = max(0, d(a,p) − d(a,n) + α)                    valid: y_p = y_a, p ≠ a, y_n ≠ y_a
//! T         = the mined triplets (below);   T⁺ = { t ∈ T : ℓ(t) > 0 }
//! loss      = 1/|T⁺| · Σ_{t ∈ T⁺} ℓ(t)       (0 when T⁺ is empty)
//!
//! mining "all":        T = every valid triplet
//!        "batch-hard": per anchor a (with a positive and a negative): the farthest positive
//!                      p = argmax d(a,·) and the closest negative n = argmin d(a,·)  ([1])
//!        "semi-hard":  per anchor-positive pair (a, p): among the semi-hard negatives
//!                      d(a,p) < d(a,n) < d(a,p) + α the closest one; if there is none,
//!                      the closest (hardest) negative overall  ([0] section 3.2)
//! ```
//! The reduction is pytorch-metric-learning's default for `TripletMarginLoss`
//! (`AvgNonZeroReducer`: the mean over triplets with a positive loss), for all three minings.
//! With `LpDistance(power=2)` (normalised embeddings, squared distance) the values equal
//! pytorch-metric-learning 2.9.0's `TripletMarginLoss(margin)` with no miner ("all"; also
//! `TripletMarginMiner(type_of_triplets="all")`) and with `BatchHardMiner` ("batch-hard"). For
//! "semi-hard", pml's `TripletMarginMiner("semihard")` keeps *every* semi-hard triplet and
//! never falls back to hard negatives; ours keeps one negative per (a, p) as FaceNet does,
//! so the reference selects the triplets by hand and lets pml compute the loss.
//!
//! Mining is a selection on values (no gradient). With `W(i,k)` = (number of active triplets
//! using `d(i,k)` as `d(a,p)`) − (as `d(a,n)`), the loss is `Σ W ⊙ d / |T⁺| + α`: the same
//! value and gradient as the mean hinge over `T⁺`, without materialising the triplets ("all"
//! mining of a 512-row P×K batch has millions). The gradient is the SDK's autodiff.
//!
//! # Shapes
//! e `[M, D]`, labels `[M]` -> loss `[1, 1]`.
//!
//! # Defaults
//! α = 0.2 (FaceNet), mining "semi-hard" (FaceNet's).

use latent_sdk::prelude::*;

/// How triplets are chosen from a batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Every valid triplet.
    All,
    /// Hardest positive and hardest negative per anchor.
    BatchHard,
    /// Closest semi-hard negative per anchor-positive pair, else the hardest negative.
    #[default]
    SemiHard,
}

/// Calls `f(a, p, n)` for each mined triplet of a squared-distance matrix `d` (`m x m`), in
/// anchor order. ("all" is not materialised: a P x K batch of 512 rows has millions.)
pub fn for_each_triplet(
    d: &[f64],
    labels: &[i64],
    margin: f64,
    mining: Mining,
    mut f: impl FnMut(usize, usize, usize),
) {
    let m = labels.len();
    let pos = |a: usize| (0..m).filter(move |&p| p != a && labels[p] == labels[a]);
    let neg = |a: usize| (0..m).filter(move |&n| labels[n] != labels[a]);
    // first index of the minimum (or maximum) of d(a, ·) over `it`, as torch's argmin/argmax
    let arg = |a: usize, it: &mut dyn Iterator<Item = usize>, max: bool| {
        it.fold(None, |b: Option<usize>, k| match b {
            Some(j)
                if (max && d[a * m + j] >= d[a * m + k])
                    || (!max && d[a * m + j] <= d[a * m + k]) =>
            {
                Some(j)
            }
            _ => Some(k),
        })
    };
    for a in 0..m {
        match mining {
            Mining::All => {
                for p in pos(a) {
                    neg(a).for_each(|n| f(a, p, n));
                }
            }
            Mining::BatchHard => {
                if let (Some(p), Some(n)) = (arg(a, &mut pos(a), true), arg(a, &mut neg(a), false))
                {
                    f(a, p, n);
                }
            }
            Mining::SemiHard => {
                let hardest = arg(a, &mut neg(a), false);
                for p in pos(a) {
                    let dap = d[a * m + p];
                    let mut semi =
                        neg(a).filter(|&n| dap < d[a * m + n] && d[a * m + n] < dap + margin);
                    if let Some(n) = arg(a, &mut semi, false).or(hardest) {
                        f(a, p, n);
                    }
                }
            }
        }
    }
}

/// The mined triplets as a list (for tests and inspection).
pub fn mine(d: &[f64], labels: &[i64], margin: f64, mining: Mining) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for_each_triplet(d, labels, margin, mining, |a, p, n| out.push((a, p, n)));
    out
}

/// Squared distances of the L2-normalised rows of `e` (`[m, dim]`), with the normalised rows
/// and their norms.
pub fn sq_distances(e: &[f32], m: usize, dim: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut u: Vec<f64> = e.iter().map(|&v| v as f64).collect();
    let mut norms = Vec::with_capacity(m);
    for row in u.chunks_mut(dim.max(1)) {
        let nr = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= nr);
        norms.push(nr);
    }
    let mut d = vec![0.0; m * m];
    for i in 0..m {
        for k in 0..m {
            d[i * m + k] = (0..dim).map(|j| (u[i * dim + j] - u[k * dim + j]).powi(2)).sum();
        }
    }
    (d, u, norms)
}

/// Triplet loss of embeddings `e` `[M, D]` with one label per row, and the metrics
/// `triplets` (number mined), `active_fraction` (share with positive loss), `d_ap`, `d_an`
/// (mean squared distances over the mined triplets).
pub fn triplet(
    e: &Var,
    labels: &[i64],
    margin: f64,
    mining: Mining,
) -> anyhow::Result<(Var, Vec<(String, f64)>)> {
    ensure!(margin >= 0.0 && margin.is_finite(), "margin must be non-negative, got {margin}");
    let (m, dim) = e.dims();
    ensure!(labels.len() == m, "{m} embeddings but {} labels", labels.len());
    // mining, on values
    let (dv, _, _) = sq_distances(&e.values(), m, dim);
    let (mut count, mut active, mut sum_ap, mut sum_an) = (0usize, 0usize, 0.0, 0.0);
    let mut w = vec![0.0f32; m * m];
    for_each_triplet(&dv, labels, margin, mining, |a, p, n| {
        let (dap, dan) = (dv[a * m + p], dv[a * m + n]);
        (count, sum_ap, sum_an) = (count + 1, sum_ap + dap, sum_an + dan);
        if dap - dan + margin > 0.0 {
            active += 1;
            w[a * m + p] += 1.0;
            w[a * m + n] -= 1.0;
        }
    });
    if count == 0 {
        let classes = labels.iter().collect::<std::collections::BTreeSet<_>>().len();
        bail!(
            "no valid triplet in a batch of {m} rows with {classes} class(es): mining needs at least two classes, one with two or more samples; raise train.batch_size or train.classes_per_batch, or use labelled data with several classes"
        );
    }
    // the loss, on the tape: d(i,k) = ‖u_i‖² + ‖u_k‖² − 2 u_iᵀu_k
    let u = e.l2_normalize();
    let sq = u.square().sum_rows();
    let d = (&sq + &sq.t()) - u.matmul_t(&u) * 2.0;
    let loss = match active {
        0 => d.sum() * 0.0,
        _ => (&d * &e.graph().from_vec(m, m, w)).sum() / active as f32 + margin as f32,
    };
    let t = count.max(1) as f64;
    let metrics = vec![
        ("triplets".into(), count as f64),
        ("active_fraction".into(), active as f64 / t),
        ("d_ap".into(), sum_ap / t),
        ("d_an".into(), sum_an / t),
    ];
    Ok((loss, metrics))
}
