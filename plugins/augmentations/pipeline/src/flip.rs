//! Random horizontal flip (torchvision `RandomHorizontalFlip`): with probability `p`, mirror
//! every row, `out[c, y, x] = in[c, y, W-1-x]`. Any channel count and size.
//!
//! # Defaults
//! `p = 0.5` (SimCLR, BYOL).

use crate::planes::Planes;
use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Horizontal flip with probability `p`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HorizontalFlip {
    /// Probability of flipping, default 0.5.
    pub p: f32,
}

impl Default for HorizontalFlip {
    fn default() -> Self {
        HorizontalFlip { p: 0.5 }
    }
}

/// Mirrors every row of `img` in place.
pub fn flip(img: &mut Planes) {
    let w = img.w;
    img.data.chunks_exact_mut(w).for_each(|row| row.reverse());
}

impl HorizontalFlip {
    /// Refuses a probability outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.p), "flip p must be in [0, 1], got {}", self.p);
        Ok(())
    }

    /// Flips `img` with probability `p`.
    pub fn apply(&self, img: &mut Planes, rng: &mut impl Rng) {
        if rng.gen::<f32>() < self.p {
            flip(img);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn flip_is_exact_mirror() {
        // 2 channels, 2 × 3
        let mut img = Planes::new(2, 2, 3, vec![1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.]);
        flip(&mut img);
        assert_eq!(img.data, vec![3., 2., 1., 6., 5., 4., 9., 8., 7., 12., 11., 10.]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let orig = Planes::new(1, 1, 2, vec![0.0, 1.0]);
        let mut a = orig.clone();
        HorizontalFlip { p: 1.0 }.apply(&mut a, &mut rng);
        assert_eq!(a.data, vec![1.0, 0.0]);
        let mut b = orig.clone();
        HorizontalFlip { p: 0.0 }.apply(&mut b, &mut rng);
        assert_eq!(b, orig);
    }
}
