//! Random Gaussian blur (SimCLR, BYOL; torchvision `GaussianBlur` inside `RandomApply(p)`).
//!
//! # Maths
//! With probability `p`, draw `σ ~ U(sigma.0, sigma.1)` and convolve separably (rows, then
//! columns) with the normalised kernel
//! ```text
//! k   = max(3, 2·round(kernel_frac · min(H, W) / 2) + 1)     odd kernel size (10%: 23 at 224)
//! g_i = exp(-i² / 2σ²) / Σ_j exp(-j² / 2σ²),   i = -(k-1)/2 .. (k-1)/2
//! ```
//! Borders are reflected (`dcb|abcd|cba`, torchvision's `reflect`). The kernel sums to 1, so a
//! constant image is unchanged and values stay in [0, 1]. Any channel count and size.
//!
//! # Defaults
//! `sigma = [0.1, 2.0]`, `kernel_frac = 0.1` (SimCLR: 10% of the side), `p = 0.5` (SimCLR;
//! BYOL: 1.0 for its first view, 0.1 for its second).

use crate::planes::Planes;
use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Gaussian blur parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GaussianBlur {
    /// Range of σ in pixels, default `[0.1, 2.0]`.
    pub sigma: [f32; 2],
    /// Kernel size as a fraction of the shorter side, default 0.1 (made odd, at least 3).
    pub kernel_frac: f32,
    /// Probability of blurring, default 0.5.
    pub p: f32,
}

impl Default for GaussianBlur {
    fn default() -> Self {
        GaussianBlur { sigma: [0.1, 2.0], kernel_frac: 0.1, p: 0.5 }
    }
}

/// The odd kernel size for an image whose shorter side is `side`.
pub fn kernel_size(side: usize, frac: f32) -> usize {
    (2 * (frac * side as f32 / 2.0).round() as usize + 1).max(3)
}

/// The normalised Gaussian kernel of odd size `k`.
pub fn kernel(k: usize, sigma: f32) -> Vec<f32> {
    let r = (k / 2) as f32;
    let mut g: Vec<f32> =
        (0..k).map(|i| (-(i as f32 - r).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= s);
    g
}

/// Index `i` (possibly outside `0..n`) reflected into `0..n` without repeating the edge.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Convolves every plane of `img` with `g` along rows and columns, reflecting at the borders.
pub fn blur(img: &mut Planes, g: &[f32]) {
    let (h, w, r) = (img.h, img.w, g.len() / 2);
    let xs: Vec<usize> = (0..w + 2 * r).map(|i| reflect(i as isize - r as isize, w)).collect();
    let ys: Vec<usize> = (0..h + 2 * r).map(|i| reflect(i as isize - r as isize, h)).collect();
    let mut padded = vec![0.0f32; w + 2 * r];
    let mut tmp = vec![0.0f32; h * w];
    for ch in 0..img.c {
        let plane = img.plane_mut(ch);
        // rows: plane -> tmp
        for y in 0..h {
            let row = &plane[y * w..][..w];
            padded.iter_mut().zip(&xs).for_each(|(p, &x)| *p = row[x]);
            let dst = &mut tmp[y * w..][..w];
            dst.fill(0.0);
            for (k, gk) in g.iter().enumerate() {
                dst.iter_mut().zip(&padded[k..k + w]).for_each(|(d, p)| *d += gk * p);
            }
        }
        // columns: tmp -> plane
        for y in 0..h {
            let dst = &mut plane[y * w..][..w];
            dst.fill(0.0);
            for (k, gk) in g.iter().enumerate() {
                let src = &tmp[ys[y + k] * w..][..w];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += gk * s);
            }
        }
    }
}

impl GaussianBlur {
    /// Refuses an empty or non-positive σ range, a bad fraction or p outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure!(
            0.0 < self.sigma[0] && self.sigma[0] <= self.sigma[1] && self.sigma[1].is_finite(),
            "blur sigma must satisfy 0 < min <= max, got {:?}",
            self.sigma
        );
        ensure!(
            self.kernel_frac >= 0.0 && self.kernel_frac <= 1.0,
            "blur kernel_frac must be in [0, 1], got {}",
            self.kernel_frac
        );
        ensure!((0.0..=1.0).contains(&self.p), "blur p must be in [0, 1], got {}", self.p);
        Ok(())
    }

    /// Blurs `img` with probability `p`.
    pub fn apply(&self, img: &mut Planes, rng: &mut impl Rng) {
        if rng.gen::<f32>() >= self.p {
            return;
        }
        let sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * rng.gen::<f32>();
        let g = kernel(kernel_size(img.h.min(img.w), self.kernel_frac), sigma);
        blur(img, &g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_sums_to_one_and_sizes_are_odd() {
        for &(side, want) in &[(224usize, 23usize), (32, 5), (28, 3), (4, 3), (1, 3)] {
            assert_eq!(kernel_size(side, 0.1), want, "side {side}");
        }
        for &s in &[0.1f32, 0.7, 2.0] {
            let g = kernel(23, s);
            assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(g.windows(2).take(11).all(|p| p[0] <= p[1]), "peaks at the centre");
        }
    }

    #[test]
    fn blur_leaves_constant_image_unchanged() {
        for &(c, h, w) in &[(3usize, 7usize, 5usize), (1, 1, 1), (1, 2, 9)] {
            let mut img = Planes::new(c, h, w, vec![0.37; c * h * w]);
            blur(&mut img, &kernel(5, 2.0));
            assert!(img.data.iter().all(|v| (v - 0.37).abs() < 1e-6), "{:?}", img.data);
        }
    }

    #[test]
    fn blur_spreads_an_impulse_and_keeps_its_mass() {
        let mut img = Planes::new(1, 9, 9, vec![0.0; 81]);
        img.data[4 * 9 + 4] = 1.0;
        blur(&mut img, &kernel(5, 1.0));
        assert!((img.data.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(img.data[4 * 9 + 4] < 1.0 && img.data[4 * 9 + 5] > 0.0);
    }
}
