//! Weighted kNN on L2-normalised features (Wu et al. 2018, as solo-learn), and accuracy.

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
pub fn knn_predict(
    train: &[f32],
    train_y: &[i64],
    test: &[f32],
    d: usize,
    k: usize,
    t: f32,
    classes: usize,
) -> Vec<i64> {
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
            score
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, _)| c as i64)
                .unwrap_or(0)
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
pub fn knn_accuracy(
    train: &[f32],
    train_y: &[i64],
    test: &[f32],
    test_y: &[i64],
    d: usize,
    k: usize,
    t: f32,
    classes: usize,
) -> f64 {
    accuracy(&knn_predict(train, train_y, test, d, k, t, classes), test_y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_with_a_tiny_temperature_is_the_nearest_neighbour_not_chance() {
        // regression: eval.knn = [[20, 1e-30]] overflowed every score to inf (near-chance)
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
}
