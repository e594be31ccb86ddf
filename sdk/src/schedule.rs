//! Schedules objectives share.

/// The target momentum at step `k` of `total`: a cosine from `base` up to 1,
/// `τ_k = 1 − (1 − base) · (cos(π k / K) + 1) / 2` (k clamped to K; K = 0 gives `base`).
///
/// BYOL's τ (Grill et al. 2020, section 3.2), MoCo v3's and DINO's teacher momentum
/// (`utils.cosine_scheduler(base, 1, ...)` of the DINO reference); lightly's
/// `cosine_schedule(k, K + 1, base, 1.0)`.
pub fn cosine_momentum(base: f64, k: u64, total: u64) -> f64 {
    if total == 0 {
        return base;
    }
    let k = k.min(total) as f64;
    1.0 - (1.0 - base) * ((std::f64::consts::PI * k / total as f64).cos() + 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn cosine_momentum_runs_from_base_to_one() {
        use super::cosine_momentum as m;
        assert_eq!(m(0.996, 0, 100), 0.996);
        assert!((m(0.996, 50, 100) - 0.998).abs() < 1e-12);
        assert_eq!(m(0.996, 100, 100), 1.0);
        assert_eq!(m(0.996, 500, 100), 1.0, "clamped after the end");
        assert_eq!(m(0.9, 7, 0), 0.9);
    }
}
