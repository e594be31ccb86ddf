//! Evaluation of frozen features: weighted kNN, a linear probe, and the collapse monitor.
//!
//! ```text
//! kNN (Wu et al. 2018, as solo-learn):  f ← f / ‖f‖;  s_j = ⟨q, f_j⟩ for the k most similar
//!        training features;  score_c = Σ_{j: y_j = c} exp((s_j − max s) / T);  prediction = argmax_c score_c
//! linear probe: multinomial logistic regression on standardised features, full-batch Adam
//! collapse:     std over samples of f/‖f‖, averaged over dimensions, times sqrt(d)
//!               (≈ 1 for well-spread embeddings, 0 when collapsed to a point)
//! effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σσ, σ the singular values of
//!               the centred embedding matrix
//! ```

use latent_sdk::kit::ops::{matmul, Mat};
use rayon::prelude::*;

/// L2-normalises each row of an `n x d` matrix in place.
pub fn normalize_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
}

/// Weighted kNN predictions for `test` given the memory bank `train` (both `n x d`, raw).
pub fn knn_predict(train: &[f32], train_y: &[i64], test: &[f32], d: usize, k: usize, t: f32, classes: usize) -> Vec<i64> {
    let mut tr = train.to_vec();
    let mut te = test.to_vec();
    normalize_rows(&mut tr, d);
    normalize_rows(&mut te, d);
    let (n, m) = (tr.len() / d, te.len() / d);
    let k = k.min(n).max(1);
    let mut sims = vec![0.0f32; m * n];
    matmul(Mat::new(&te, m, d), Mat::new(&tr, n, d).t(), &mut sims, false);
    sims.par_chunks(n)
        .map(|row| {
            let mut idx: Vec<usize> = (0..n).collect();
            if k < n {
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                idx.truncate(k);
            }
            // exp((s_j − s_max) / T): the same votes as exp(s_j / T) up to one factor, finite for
            // any T > 0 (exp(s/T) overflowed to inf below T ≈ 1e-3 and every class tied)
            let top = idx.iter().map(|&j| row[j] as f64).fold(f64::NEG_INFINITY, f64::max);
            let mut score = vec![0.0f64; classes];
            for &j in &idx {
                let c = train_y[j] as usize;
                if c < classes {
                    score[c] += ((row[j] as f64 - top) / t as f64).exp();
                }
            }
            score.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c as i64).unwrap_or(0)
        })
        .collect()
}

/// Top-1 accuracy of predictions.
pub fn accuracy(pred: &[i64], y: &[i64]) -> f64 {
    if y.is_empty() {
        return 0.0;
    }
    pred.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

/// kNN top-1 accuracy.
#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(train: &[f32], train_y: &[i64], test: &[f32], test_y: &[i64], d: usize, k: usize, t: f32, classes: usize) -> f64 {
    accuracy(&knn_predict(train, train_y, test, d, k, t, classes), test_y)
}

/// Trains a linear probe on `(train, train_y)` and returns its top-1 accuracy on `(test, test_y)`.
pub fn linear_probe(train: &[f32], train_y: &[i64], test: &[f32], test_y: &[i64], d: usize, classes: usize, steps: usize) -> f64 {
    let n = train.len() / d;
    // standardise with the training statistics
    let mut mean = vec![0.0f64; d];
    let mut var = vec![0.0f64; d];
    for row in train.chunks(d) {
        for j in 0..d {
            mean[j] += row[j] as f64 / n as f64;
        }
    }
    for row in train.chunks(d) {
        for j in 0..d {
            var[j] += (row[j] as f64 - mean[j]).powi(2) / n as f64;
        }
    }
    let std: Vec<f64> = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
    let norm = |x: &[f32]| -> Vec<f32> { x.chunks(d).flat_map(|r| (0..d).map(|j| ((r[j] as f64 - mean[j]) / std[j]) as f32).collect::<Vec<_>>()).collect() };
    let xtr = norm(train);
    let xte = norm(test);
    let mut w = vec![0.0f32; d * classes];
    let mut b = vec![0.0f32; classes];
    let (mut mw, mut vw) = (vec![0.0f32; w.len()], vec![0.0f32; w.len()]);
    let (mut mb, mut vb) = (vec![0.0f32; classes], vec![0.0f32; classes]);
    let (lr, b1, b2, eps, wd) = (0.05f32, 0.9f32, 0.999f32, 1e-8f32, 1e-4f32);
    let mut logits = vec![0.0f32; n * classes];
    for t in 1..=steps {
        logits.iter_mut().enumerate().for_each(|(i, v)| *v = b[i % classes]);
        matmul(Mat::new(&xtr, n, d), Mat::new(&w, d, classes), &mut logits, true);
        // softmax - onehot, / n
        for (i, row) in logits.chunks_mut(classes).enumerate() {
            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
            let s: f32 = row.iter().map(|v| (v - mx).exp()).sum();
            row.iter_mut().for_each(|v| *v = (*v - mx).exp() / s / n as f32);
            let y = train_y[i] as usize;
            if y < classes {
                row[y] -= 1.0 / n as f32;
            }
        }
        let mut gw = vec![0.0f32; d * classes];
        matmul(Mat::new(&xtr, n, d).t(), Mat::new(&logits, n, classes), &mut gw, false);
        let mut gb = vec![0.0f32; classes];
        for row in logits.chunks(classes) {
            gb.iter_mut().zip(row).for_each(|(g, v)| *g += v);
        }
        gw.iter_mut().zip(&w).for_each(|(g, w)| *g += wd * w);
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        let adam = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
            }
        };
        adam(&mut w, &gw, &mut mw, &mut vw);
        adam(&mut b, &gb, &mut mb, &mut vb);
    }
    let m = test.len() / d;
    let mut out = vec![0.0f32; m * classes];
    out.iter_mut().enumerate().for_each(|(i, v)| *v = b[i % classes]);
    matmul(Mat::new(&xte, m, d), Mat::new(&w, d, classes), &mut out, true);
    let pred: Vec<i64> =
        out.chunks(classes).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c as i64).unwrap_or(0)).collect();
    accuracy(&pred, test_y)
}

/// Std over samples of the L2-normalised embeddings, averaged over dimensions, times sqrt(d).
pub fn collapse_std(x: &[f32], d: usize) -> f64 {
    let mut z = x.to_vec();
    normalize_rows(&mut z, d);
    let n = z.len() / d;
    if n < 2 {
        return 0.0;
    }
    let mut total = 0.0;
    for j in 0..d {
        let mean = z.chunks(d).map(|r| r[j] as f64).sum::<f64>() / n as f64;
        let var = z.chunks(d).map(|r| (r[j] as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        total += var.sqrt();
    }
    total / d as f64 * (d as f64).sqrt()
}

/// Effective rank of an `n x d` embedding matrix (after centring).
pub fn effective_rank(x: &[f32], d: usize) -> f64 {
    let n = x.len() / d;
    if n < 2 {
        return 0.0;
    }
    let mut mean = vec![0.0f64; d];
    for r in x.chunks(d) {
        for j in 0..d {
            mean[j] += r[j] as f64 / n as f64;
        }
    }
    let mut cov = nalgebra::DMatrix::<f64>::zeros(d, d);
    for r in x.chunks(d) {
        let c: Vec<f64> = (0..d).map(|j| r[j] as f64 - mean[j]).collect();
        for a in 0..d {
            for b in a..d {
                cov[(a, b)] += c[a] * c[b];
            }
        }
    }
    for a in 0..d {
        for b in 0..a {
            cov[(a, b)] = cov[(b, a)];
        }
    }
    let eig = nalgebra::SymmetricEigen::new(cov);
    let sv: Vec<f64> = eig.eigenvalues.iter().map(|l| l.max(0.0).sqrt()).collect();
    let s: f64 = sv.iter().sum();
    if s <= 0.0 {
        return 0.0;
    }
    let h: f64 = sv.iter().map(|v| v / s).filter(|p| *p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_with_a_tiny_temperature_is_the_nearest_neighbour_not_chance() {
        // issue 14.9: eval.knn = [[20, 1e-30]] overflowed every score to inf (near-chance)
        let train = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9];
        let y = [0, 0, 1, 1];
        let test = [0.05, 1.0, 1.0, 0.05];
        assert_eq!(knn_predict(&train, &y, &test, 2, 4, 1e-30, 2), vec![1, 0]);
    }

    #[test]
    fn knn_on_a_hand_made_set_gives_the_known_answer() {
        // class 0 points to +x, class 1 to +y; queries near each axis, and one in between that
        // the two nearest (k = 2, both class 1) decide.
        let train = [1.0, 0.1, 0.9, -0.1, 0.1, 1.0, -0.1, 0.8, 0.5, 0.6];
        let y = [0, 0, 1, 1, 1];
        let test = [2.0, 0.0, 0.0, 3.0, 0.45, 0.55];
        let pred = knn_predict(&train, &y, &test, 2, 2, 0.1, 2);
        assert_eq!(pred, vec![0, 1, 1]);
        // weights matter: with k = 5 and a low temperature the single closest sample wins
        let pred = knn_predict(&train, &y, &[1.0, 0.0], 2, 5, 0.01, 2);
        assert_eq!(pred, vec![0]);
        assert_eq!(knn_accuracy(&train, &y, &test, &[0, 1, 0], 2, 2, 0.1, 2), 2.0 / 3.0);
    }

    #[test]
    fn linear_probe_separates_linearly_separable_features() {
        // 3 classes, 4-d, class c shifted along dimension c; noise from a fixed sequence
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..300 {
            let c = i % 3;
            for j in 0..4 {
                let noise = ((i * 31 + j * 17) % 13) as f32 / 13.0 - 0.5;
                x.push(if j == c { 3.0 } else { 0.0 } + 0.5 * noise);
            }
            y.push(c as i64);
        }
        let acc = linear_probe(&x, &y, &x, &y, 4, 3, 200);
        assert_eq!(acc, 1.0);
    }

    #[test]
    fn collapse_metrics_tell_spread_from_collapsed() {
        let d = 8;
        let spread: Vec<f32> = (0..400 * d).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
        let collapsed: Vec<f32> = (0..400 * d).map(|i| 1.0 + 1e-4 * ((i % 3) as f32)).collect();
        let s = collapse_std(&spread, d);
        assert!(s > 0.7 && s < 1.3, "{s}");
        assert!(collapse_std(&collapsed, d) < 0.01);
        // effective rank: identity-like data has full rank, a rank-1 set has rank ~1
        let mut eye = vec![0.0f32; 64 * d];
        for i in 0..64 {
            eye[i * d + i % d] = if (i / d) % 2 == 0 { 1.0 } else { -1.0 };
        }
        let r = effective_rank(&eye, d);
        assert!((r - d as f64).abs() < 0.5, "{r}");
        let line: Vec<f32> = (0..64 * d).map(|i| (i / d) as f32 * (1 + i % d) as f32).collect();
        assert!(effective_rank(&line, d) < 1.1);
    }
}
