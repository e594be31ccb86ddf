//! The collapse monitor: the spread of L2-normalised embeddings (std·√d) and their
//! effective rank.

use super::knn::normalize_rows;

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
    fn collapse_metrics_tell_spread_from_collapsed() {
        let d = 8;
        let spread: Vec<f32> =
            (0..400 * d).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
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
