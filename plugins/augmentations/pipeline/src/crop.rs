//! Random resized crop (torchvision `RandomResizedCrop`), the main augmentation of SimCLR/BYOL.
//!
//! # Sampling (torchvision's `get_params`)
//! ```text
//! A = H·W                                          input area
//! repeat up to 10 times:
//!     a ~ U(scale.0, scale.1) · A                  target area
//!     r = exp(U(ln ratio.0, ln ratio.1))           aspect ratio w/h, log-uniform
//!     w = round(√(a·r)), h = round(√(a/r))
//!     if 0 < w ≤ W and 0 < h ≤ H: top ~ U{0..H-h}, left ~ U{0..W-w}; done
//! fallback: the central crop of the whole image with its ratio clamped to `ratio`
//! ```
//! The box is then resampled to the output size with antialiased bilinear filtering
//! ([`crate::planes::resize_box`]). Works on any channel count and size.
//!
//! # Defaults
//! `scale = [0.08, 1.0]`, `ratio = [3/4, 4/3]` (SimCLR, BYOL, torchvision). The output size is
//! the pipeline's `size` (default: the input size).

use crate::planes::{resize_box, Planes};
use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Random resized crop parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image's, default `[0.08, 1.0]`.
    pub scale: [f32; 2],
    /// Range of the crop's aspect ratio w/h, default `[3/4, 4/3]`.
    pub ratio: [f32; 2],
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        RandomResizedCrop { scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0] }
    }
}

impl RandomResizedCrop {
    /// Refuses empty or out-of-range intervals.
    pub fn validate(&self) -> Result<()> {
        let [s0, s1] = self.scale;
        let [r0, r1] = self.ratio;
        ensure!(
            0.0 < s0 && s0 <= s1 && s1 <= 1.0,
            "crop scale must satisfy 0 < min <= max <= 1, got {:?}",
            self.scale
        );
        ensure!(
            0.0 < r0 && r0 <= r1 && r1.is_finite(),
            "crop ratio must satisfy 0 < min <= max, got {:?}",
            self.ratio
        );
        Ok(())
    }

    /// Draws a box `(top, left, height, width)` inside an `h × w` image.
    pub fn sample(&self, h: usize, w: usize, rng: &mut impl Rng) -> (usize, usize, usize, usize) {
        let area = (h * w) as f32;
        let (l0, l1) = (self.ratio[0].ln(), self.ratio[1].ln());
        for _ in 0..10 {
            let target = area * rng.gen_range(self.scale[0]..=self.scale[1]);
            let r = rng.gen_range(l0..=l1).exp();
            let cw = (target * r).sqrt().round() as usize;
            let ch = (target / r).sqrt().round() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let top = rng.gen_range(0..=h - ch);
                let left = rng.gen_range(0..=w - cw);
                return (top, left, ch, cw);
            }
        }
        let in_ratio = w as f32 / h as f32;
        let (ch, cw) = if in_ratio < self.ratio[0] {
            (((w as f32 / self.ratio[0]).round() as usize).clamp(1, h), w)
        } else if in_ratio > self.ratio[1] {
            (h, ((h as f32 * self.ratio[1]).round() as usize).clamp(1, w))
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }

    /// Crops a random box and resamples it to `oh × ow`.
    pub fn apply(&self, img: &Planes, oh: usize, ow: usize, rng: &mut impl Rng) -> Planes {
        let (top, left, ch, cw) = self.sample(img.h, img.w, rng);
        resize_box(img, top, left, ch, cw, oh, ow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn crop_area_and_ratio_stay_in_bounds_over_many_draws() {
        let crop = RandomResizedCrop::default();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(h, w) in &[(200usize, 300usize), (256, 256), (120, 400)] {
            let (mut lo, mut hi) = (f32::MAX, 0.0f32);
            for _ in 0..5000 {
                let (t, l, ch, cw) = crop.sample(h, w, &mut rng);
                assert!(t + ch <= h && l + cw <= w && ch > 0 && cw > 0);
                let frac = (ch * cw) as f32 / (h * w) as f32;
                let ratio = cw as f32 / ch as f32;
                // rounding to whole pixels moves area and ratio by at most ~1 pixel per side
                let tol_a = 2.0 * (ch + cw) as f32 / (h * w) as f32 + 1e-6;
                let tol_r = ratio * (1.0 / ch as f32 + 1.0 / cw as f32);
                assert!(
                    frac >= 0.08 - tol_a && frac <= 1.0 + 1e-6,
                    "area fraction {frac} out of [0.08, 1]"
                );
                assert!(
                    ratio >= 0.75 - tol_r && ratio <= 4.0 / 3.0 + tol_r,
                    "ratio {ratio} out of [3/4, 4/3]"
                );
                lo = lo.min(frac);
                hi = hi.max(frac);
            }
            // the largest box of ratio ≤ 4/3 in 120 × 400 covers 0.4 of it
            assert!(lo < 0.15 && hi > 0.35, "draws should cover the range, got [{lo}, {hi}]");
        }
    }

    #[test]
    fn fixed_full_scale_crop_of_square_image_is_identity() {
        let crop = RandomResizedCrop { scale: [1.0, 1.0], ratio: [1.0, 1.0] };
        let img = Planes::new(3, 5, 5, (0..75).map(|v| v as f32 / 75.0).collect());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(crop.apply(&img, 5, 5, &mut rng), img);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(RandomResizedCrop { scale: [0.5, 0.2], ..Default::default() }.validate().is_err());
        assert!(RandomResizedCrop { ratio: [0.0, 1.0], ..Default::default() }.validate().is_err());
    }
}
