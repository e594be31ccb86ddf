//! DINO's loss: the student's cross-entropy against a centred, sharpened teacher.
//!
//! - \[0\] DINO, Caron et al. 2021, <https://arxiv.org/abs/2104.14294> (algorithm 1, section 3.1)
//! - \[1\] facebookresearch/dino `main_dino.py` (`DINOLoss`); lightly 1.6 `DINOLoss`
//!
//! ```text
//! p_t = softmax((t_t − c) / τ_t)           teacher view t (constant: no gradient)
//! q_s = log_softmax(s_s / τ_s)             student view s
//! loss = 1 / (n_pairs · B) · Σ_{t ≠ s} Σ_i −p_t,i · q_s,i       n_pairs = T·V − min(T, V)
//! c ← m · c + (1 − m) · mean of the teacher logits over every teacher view and row
//! ```
//! The teacher sees the first `T` views (the global crops), the student all `V`; a pair of a
//! view with itself is left out. The centre used is the one *before* the update (as [1]).
//!
//! # Shapes
//! student logits `[B, K]` × V, teacher logits `[B, K]` × T → `[1, 1]`; centre `[K]`.
//!
//! # Defaults
//! τ_s = 0.1, τ_t = 0.04, m = 0.9 (the paper's and lightly's).

use latent_sdk::prelude::*;

/// `softmax((t − c) / temp)` of each row of the teacher logits `[B, K]` (plain values).
pub fn teacher_probs(logits: &[f32], k: usize, center: &[f32], temp: f32) -> Vec<f32> {
    let mut p = Vec::with_capacity(logits.len());
    for row in logits.chunks(k) {
        let z: Vec<f32> = row.iter().zip(center).map(|(x, c)| (x - c) / temp).collect();
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        p.extend(e.iter().map(|v| v / s));
    }
    p
}

/// The loss of the student logits (`[B, K]` each, traced) against the teacher probabilities
/// (`[B·K]` values each, for the first `teacher.len()` views).
pub fn dino_loss(student: &[Var], teacher: &[Vec<f32>], student_temp: f32) -> Var {
    let (v, t) = (student.len(), teacher.len());
    let (b, k) = student[0].dims();
    let pairs = t * v - t.min(v);
    let mut total: Option<Var> = None;
    for (s, logits) in student.iter().enumerate() {
        // Σ over the teacher views paired with s: one product with the student's log-softmax
        let others: Vec<&Vec<f32>> =
            teacher.iter().enumerate().filter(|(ti, _)| *ti != s).map(|(_, p)| p).collect();
        if others.is_empty() {
            continue; // the only teacher view is this one
        }
        let mut p = vec![0.0f32; b * k];
        for pt in others {
            p.iter_mut().zip(pt).for_each(|(a, x)| *a += x);
        }
        let q = logits.scale(1.0 / student_temp).log_softmax_rows();
        let term = q.mul(&logits.graph().from_vec(b, k, p)).sum();
        total = Some(match total {
            Some(acc) => acc + term,
            None => term,
        });
    }
    total.expect("at least one pair of different views").scale(-1.0 / (pairs * b) as f32)
}

/// The new centre: `m · c + (1 − m) · mean over every row of every teacher view`.
pub fn updated_center(center: &[f32], teacher_logits: &[&[f32]], momentum: f32) -> Vec<f32> {
    let k = center.len();
    let rows: usize = teacher_logits.iter().map(|l| l.len() / k).sum();
    let mut mean = vec![0.0f64; k];
    for l in teacher_logits {
        for row in l.chunks(k) {
            mean.iter_mut().zip(row).for_each(|(m, x)| *m += *x as f64);
        }
    }
    center
        .iter()
        .zip(&mean)
        .map(|(c, m)| momentum * c + (1.0 - momentum) * (m / rows as f64) as f32)
        .collect()
}

/// The teacher temperature of `epoch`: linear from `warmup` to `temp` over `warmup_epochs`
/// (`torch.linspace(warmup, temp, warmup_epochs)[epoch]`), then `temp`.
pub fn teacher_temp(epoch: u64, warmup: f64, temp: f64, warmup_epochs: u64) -> f64 {
    if epoch >= warmup_epochs {
        return temp;
    }
    if warmup_epochs == 1 {
        return warmup;
    }
    warmup + (temp - warmup) * epoch as f64 / (warmup_epochs - 1) as f64
}

/// Mean entropy `−Σ p ln p` of the rows of `p` (`[N·K]` values).
pub fn entropy(p: &[f32], k: usize) -> f64 {
    let rows = (p.len() / k).max(1);
    let h: f64 = p.iter().filter(|&&x| x > 0.0).map(|&x| -(x as f64) * (x as f64).ln()).sum();
    h / rows as f64
}
