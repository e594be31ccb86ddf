//! Random solarization (BYOL; torchvision `RandomSolarize`, PIL `ImageOps.solarize`): with
//! probability `p`, invert every value at or above the threshold.
//!
//! # Maths
//! ```text
//! out = 1 - x   if x ≥ threshold
//!       x       otherwise
//! ```
//! Works per value, on any channel count.
//!
//! # Defaults
//! `threshold = 0.5` (PIL's 128 of 255), `p = 0.2` (BYOL's second view; 0 in its first).

use crate::planes::Planes;
use anyhow::{ensure, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Solarization with probability `p`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomSolarize {
    /// Values at or above it are inverted, default 0.5.
    pub threshold: f32,
    /// Probability of solarizing, default 0.2.
    pub p: f32,
}

impl Default for RandomSolarize {
    fn default() -> Self {
        RandomSolarize { threshold: 0.5, p: 0.2 }
    }
}

/// Inverts values `≥ threshold` in place.
pub fn solarize(img: &mut Planes, threshold: f32) {
    img.data.iter_mut().for_each(|v| {
        if *v >= threshold {
            *v = 1.0 - *v
        }
    });
}

impl RandomSolarize {
    /// Refuses a probability outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.p), "solarize p must be in [0, 1], got {}", self.p);
        ensure!(
            self.threshold.is_finite(),
            "solarize threshold must be finite, got {}",
            self.threshold
        );
        Ok(())
    }

    /// Solarizes `img` with probability `p`.
    pub fn apply(&self, img: &mut Planes, rng: &mut impl Rng) {
        if rng.gen::<f32>() < self.p {
            solarize(img, self.threshold);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solarize_inverts_at_and_above_threshold() {
        let mut img = Planes::new(1, 1, 5, vec![0.0, 0.49, 0.5, 0.8, 1.0]);
        solarize(&mut img, 0.5);
        assert_eq!(img.data, vec![0.0, 0.49, 0.5, 1.0 - 0.8, 0.0]);
    }
}
