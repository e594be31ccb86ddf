//! Random grayscale (torchvision `RandomGrayscale`): with probability `p`, replace an RGB image
//! by its luma in all three channels (the channel count is kept).
//!
//! # Maths (ITU-R 601-2 luma, as PIL's `convert("L")` and torchvision)
//! ```text
//! L = 0.299 R + 0.587 G + 0.114 B
//! ```
//! Grey (1-channel) images are left unchanged: they are already grayscale.
//!
//! # Defaults
//! `p = 0.2` (SimCLR, BYOL).

use crate::planes::Planes;
use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// ITU-R 601-2 luma weights for R, G, B.
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// The luma plane of an RGB image (a copy of the plane for a grey one).
pub fn luma(img: &Planes) -> Vec<f32> {
    if img.c != 3 {
        return img.plane(0).to_vec();
    }
    let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
    r.iter().zip(g).zip(b).map(|((r, g), b)| LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).collect()
}

/// Replaces every channel of an RGB image by its luma, in place.
pub fn to_grayscale(img: &mut Planes) {
    if img.c != 3 {
        return;
    }
    let l = luma(img);
    for ch in 0..3 {
        img.plane_mut(ch).copy_from_slice(&l);
    }
}

/// Grayscale with probability `p`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomGrayscale {
    /// Probability of converting, default 0.2.
    pub p: f32,
}

impl Default for RandomGrayscale {
    fn default() -> Self {
        RandomGrayscale { p: 0.2 }
    }
}

impl RandomGrayscale {
    /// Refuses a probability outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.p), "grayscale p must be in [0, 1], got {}", self.p);
        Ok(())
    }

    /// Converts `img` with probability `p` (grey images: no change).
    pub fn apply(&self, img: &mut Planes, rng: &mut impl Rng) {
        if rng.gen::<f32>() < self.p {
            to_grayscale(img);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grayscale_uses_itu_r_601_2_weights() {
        // pure red, green, blue and a mix, as 4 pixels
        let mut img = Planes::new(3, 1, 4, vec![1., 0., 0., 0.5, 0., 1., 0., 0.5, 0., 0., 1., 1.0]);
        to_grayscale(&mut img);
        let want = [0.299, 0.587, 0.114, 0.299 * 0.5 + 0.587 * 0.5 + 0.114];
        for ch in 0..3 {
            for (got, w) in img.plane(ch).iter().zip(want) {
                assert!((got - w).abs() < 1e-6, "{got} vs {w}");
            }
        }
        let mut grey = Planes::new(1, 1, 2, vec![0.3, 0.7]);
        to_grayscale(&mut grey);
        assert_eq!(grey.data, vec![0.3, 0.7]);
    }
}
