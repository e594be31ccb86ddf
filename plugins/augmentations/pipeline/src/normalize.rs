//! Normalize (torchvision `Normalize`): per-channel standardisation, deterministic.
//!
//! # Maths
//! ```text
//! out[c] = (x[c] - mean[c]) / std[c]
//! ```
//! `mean` and `std` have one value (used for every channel) or one per channel. The output
//! leaves [0, 1]; put it last.
//!
//! # Defaults
//! ImageNet statistics, `mean = [0.485, 0.456, 0.406]`, `std = [0.229, 0.224, 0.225]` (lightly's
//! default). On a grey image a 3-value mean/std is refused: give one value.

use crate::planes::Planes;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Per-channel mean and standard deviation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Normalize {
    /// Subtracted, default ImageNet's `[0.485, 0.456, 0.406]`.
    pub mean: Vec<f32>,
    /// Divided by, default ImageNet's `[0.229, 0.224, 0.225]`.
    pub std: Vec<f32>,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }
}

impl Normalize {
    /// Refuses empty lists, lengths that differ, and non-positive std.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.mean.is_empty() && self.mean.len() == self.std.len(),
            "normalize mean and std need the same, non-zero length, got {} and {}",
            self.mean.len(),
            self.std.len()
        );
        ensure!(
            self.std.iter().all(|s| *s > 0.0 && s.is_finite()),
            "normalize std must be positive, got {:?}",
            self.std
        );
        ensure!(
            self.mean.iter().all(|m| m.is_finite()),
            "normalize mean must be finite, got {:?}",
            self.mean
        );
        Ok(())
    }

    /// Checks that it fits images of `c` channels.
    pub fn check_channels(&self, c: usize) -> Result<()> {
        ensure!(
            self.mean.len() == 1 || self.mean.len() == c,
            "normalize has {} means for images of {c} channels (give 1 or {c})",
            self.mean.len()
        );
        Ok(())
    }

    /// Standardises `img` in place (after [`Normalize::check_channels`]).
    pub fn apply(&self, img: &mut Planes) {
        for ch in 0..img.c {
            let i = if self.mean.len() == 1 { 0 } else { ch };
            let (m, inv) = (self.mean[i], 1.0 / self.std[i]);
            img.plane_mut(ch).iter_mut().for_each(|v| *v = (*v - m) * inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_per_channel() {
        let n = Normalize { mean: vec![0.5, 0.0], std: vec![0.5, 2.0] };
        let mut img = Planes::new(2, 1, 2, vec![0.0, 1.0, 1.0, 0.5]);
        n.check_channels(2).unwrap();
        n.apply(&mut img);
        assert_eq!(img.data, vec![-1.0, 1.0, 0.5, 0.25]);
        assert!(n.check_channels(3).is_err());
    }
}
