//! MoCo's InfoNCE against a queue of negative keys, and the queue's FIFO update.
//!
//! - \[0\] MoCo, He et al. 2020, <https://arxiv.org/abs/1911.05722> (equation 1, algorithm 1)
//! - \[1\] MoCo v2, Chen et al. 2020, <https://arxiv.org/abs/2003.04297>
//!
//! ```text
//! q̂ = q / ‖q‖,  k̂ = k / ‖k‖                          queries (online), keys (target)    [N, D]
//! l⁺_n = q̂_n · k̂_n,   l⁻_nj = q̂_n · Q_j                  Q: the queue of earlier keys       [K, D]
//! L = 1/N · Σ_n −log( exp(l⁺_n/τ) / (exp(l⁺_n/τ) + Σ_j exp(l⁻_nj/τ)) )
//! ```
//! The same value as lightly 1.6's `NTXentLoss(temperature, memory_bank_size=(K, D))(q, k)`,
//! whose bank is this queue. The queue is then updated with the normalised keys as lightly's
//! `MemoryBankModule` does: written at the pointer; a batch that reaches the end fills it and
//! the pointer returns to 0 (the rest of that batch is dropped). The gradient is the SDK's
//! autodiff; the queue and the keys are constants.

use latent_sdk::prelude::*;

/// InfoNCE of queries `q` `[N, D]` against their keys `k` `[N, D]` (detached) and the queue
/// `queue` `[K, D]` (rows already unit length), at temperature `t`; also `top1`, the share of
/// queries whose own key is more similar than every queued one.
pub fn info_nce(q: &Var, k: &Var, queue: &Var, t: f32) -> (Var, f64) {
    let (q, k) = (q.l2_normalize(), k.l2_normalize());
    let pos = q.mul(&k).sum_rows() / t;
    let neg = q.matmul_t(queue) / t;
    let lse_neg = neg.logsumexp_rows();
    // log(exp(l⁺) + Σ exp(l⁻)): |l| ≤ 1/τ, so the exponentials stay far from overflow
    let lse = (pos.exp() + lse_neg.exp()).ln();
    let (p, n) = (pos.values(), neg.values());
    let kq = queue.rows();
    let top1 = p
        .iter()
        .enumerate()
        .filter(|(i, &pv)| n[i * kq..(i + 1) * kq].iter().all(|&v| pv > v))
        .count() as f64
        / p.len().max(1) as f64;
    ((lse - pos).mean(), top1)
}

/// Writes the rows of `keys` (`[N, D]`, unit length) into `queue` (`[K, D]`) at `*ptr`, as
/// lightly's `MemoryBankModule._dequeue_and_enqueue`.
pub fn enqueue(queue: &mut [f32], ptr: &mut usize, keys: &[f32], d: usize) {
    let (k, n) = (queue.len() / d, keys.len() / d);
    if *ptr + n >= k {
        let fit = k - *ptr;
        queue[*ptr * d..].copy_from_slice(&keys[..fit * d]);
        *ptr = 0;
    } else {
        queue[*ptr * d..(*ptr + n) * d].copy_from_slice(keys);
        *ptr += n;
    }
}

/// MoCo v3's contrastive loss (Chen, Xie, He 2021, algorithm 1, `ctr`) of queries `q` `[N, D]`
/// against the keys `k` `[N, D]` (detached) of the other view in the same batch: query n's
/// positive is key n, the other N − 1 keys are its negatives. Scaled by 2τ as in the paper.
/// Also `top1`, the share of queries whose own key is the most similar.
///
/// ```text
/// logits = q̂ k̂ᵀ / τ                                                          [N, N]
/// ctr(q, k) = CrossEntropy(logits, labels = 0..N) · 2τ
/// ```
pub fn ctr(q: &Var, k: &Var, t: f32) -> (Var, f64) {
    let logits = q.l2_normalize().matmul_t(&k.l2_normalize()) / t;
    let n = logits.rows();
    let l = logits.values();
    let top1 = (0..n).filter(|&i| (0..n).all(|j| j == i || l[i * n + i] > l[i * n + j])).count()
        as f64
        / n.max(1) as f64;
    (cross_entropy(&logits, &(0..n).collect::<Vec<_>>()).scale(2.0 * t), top1)
}

/// MoCo v3's symmetric loss: `ctr(q₀, k₁) + ctr(q₁, k₀)`, and the mean `top1` of the two.
pub fn symmetric_ctr(q: [&Var; 2], k: [&Var; 2], t: f32) -> (Var, f64) {
    let (a, ta) = ctr(q[0], k[1], t);
    let (b, tb) = ctr(q[1], k[0], t);
    (a.add(&b), (ta + tb) / 2.0)
}
