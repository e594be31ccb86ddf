//! The linear probe: multinomial logistic regression on standardised frozen features,
//! full-batch Adam.

use super::knn::accuracy;
use latent_sdk::kit::ops::{matmul, Mat};

/// Trains a linear probe on `(train, train_y)` and returns its top-1 accuracy on `(test, test_y)`.
pub fn linear_probe(
    train: &[f32],
    train_y: &[i64],
    test: &[f32],
    test_y: &[i64],
    d: usize,
    classes: usize,
    steps: usize,
) -> f64 {
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
    let norm = |x: &[f32]| -> Vec<f32> {
        x.chunks(d)
            .flat_map(|r| {
                (0..d).map(|j| ((r[j] as f64 - mean[j]) / std[j]) as f32).collect::<Vec<_>>()
            })
            .collect()
    };
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
    let pred: Vec<i64> = out
        .chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, _)| c as i64)
                .unwrap_or(0)
        })
        .collect();
    accuracy(&pred, test_y)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
