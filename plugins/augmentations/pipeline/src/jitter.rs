//! Colour jitter (torchvision `ColorJitter`, wrapped in `RandomApply(p)` as SimCLR does).
//!
//! With probability `p`, draw four factors, then apply the four adjustments in a random order
//! (a uniform permutation, as torchvision):
//! ```text
//! brightness  f_b ~ U(max(0, 1-b), 1+b)   x ← clamp(f_b · x)
//! contrast    f_c ~ U(max(0, 1-c), 1+c)   x ← clamp(f_c · x + (1-f_c) · mean(L))   L = luma
//! saturation  f_s ~ U(max(0, 1-s), 1+s)   x ← clamp(f_s · x + (1-f_s) · L)         per pixel
//! hue         δ   ~ U(-h, h)              H ← (H + δ) mod 1 in HSV space
//! ```
//! with `clamp` to [0, 1] and `L = 0.299 R + 0.587 G + 0.114 B`. A factor of exactly 1 (or
//! δ = 0) skips its adjustment, so strength 0 is the identity. Grey (1-channel) images get
//! brightness and contrast (`L` is the image itself); saturation and hue have no meaning for
//! them and are skipped.
//!
//! # Defaults
//! `brightness = contrast = saturation = 0.8`, `hue = 0.2`, `p = 0.8`: SimCLR at strength 1
//! (`0.8 s, 0.8 s, 0.8 s, 0.2 s`). BYOL uses `0.4, 0.4, 0.2, 0.1`.

use crate::grayscale::luma;
use crate::planes::Planes;
use anyhow::{ensure, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Colour jitter strengths and the probability of applying it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorJitter {
    /// Brightness strength b ≥ 0, default 0.8.
    pub brightness: f32,
    /// Contrast strength c ≥ 0, default 0.8.
    pub contrast: f32,
    /// Saturation strength s ≥ 0, default 0.8.
    pub saturation: f32,
    /// Hue strength h in [0, 0.5], default 0.2.
    pub hue: f32,
    /// Probability of jittering at all, default 0.8.
    pub p: f32,
}

impl Default for ColorJitter {
    fn default() -> Self {
        ColorJitter::simclr(1.0)
    }
}

impl ColorJitter {
    /// SimCLR's jitter at strength `s`: `0.8 s, 0.8 s, 0.8 s, 0.2 s`, p = 0.8.
    pub fn simclr(s: f32) -> ColorJitter {
        ColorJitter {
            brightness: 0.8 * s,
            contrast: 0.8 * s,
            saturation: 0.8 * s,
            hue: 0.2 * s,
            p: 0.8,
        }
    }

    /// Refuses negative strengths, hue above 0.5 and p outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            ensure!(v >= 0.0 && v.is_finite(), "jitter {n} must be >= 0, got {v}");
        }
        ensure!(
            (0.0..=0.5).contains(&self.hue),
            "jitter hue must be in [0, 0.5], got {}",
            self.hue
        );
        ensure!((0.0..=1.0).contains(&self.p), "jitter p must be in [0, 1], got {}", self.p);
        Ok(())
    }

    /// Jitters `img` in place with probability `p`.
    pub fn apply(&self, img: &mut Planes, rng: &mut impl Rng) {
        if rng.gen::<f32>() >= self.p {
            return;
        }
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let factor = |s: f32, rng: &mut _| {
            if s > 0.0 {
                uniform(rng, (1.0 - s).max(0.0), 1.0 + s)
            } else {
                1.0
            }
        };
        let fb = factor(self.brightness, rng);
        let fc = factor(self.contrast, rng);
        let fs = factor(self.saturation, rng);
        let dh = if self.hue > 0.0 { uniform(rng, -self.hue, self.hue) } else { 0.0 };
        for op in order {
            match op {
                0 if fb != 1.0 => brightness(img, fb),
                1 if fc != 1.0 => contrast(img, fc),
                2 if fs != 1.0 && img.c == 3 => saturation(img, fs),
                3 if dh != 0.0 && img.c == 3 => hue(img, dh),
                _ => {}
            }
        }
    }
}

fn uniform(rng: &mut impl Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.gen::<f32>()
}

/// `x ← clamp(f · x)`.
pub fn brightness(img: &mut Planes, f: f32) {
    img.data.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
}

/// `x ← clamp(f · x + (1 - f) · mean(luma))`.
pub fn contrast(img: &mut Planes, f: f32) {
    let l = luma(img);
    let mean = l.iter().sum::<f32>() / l.len().max(1) as f32;
    let add = (1.0 - f) * mean;
    img.data.iter_mut().for_each(|v| *v = (f * *v + add).clamp(0.0, 1.0));
}

/// `x ← clamp(f · x + (1 - f) · luma)` per pixel (RGB only).
pub fn saturation(img: &mut Planes, f: f32) {
    let l = luma(img);
    for ch in 0..img.c {
        img.plane_mut(ch)
            .iter_mut()
            .zip(&l)
            .for_each(|(v, l)| *v = (f * *v + (1.0 - f) * l).clamp(0.0, 1.0));
    }
}

/// Rotates the hue by `delta` turns (RGB only), via HSV as torchvision's tensor path.
///
/// Branch-free so that it vectorises: with `v = max`, `m = min`, `c = v - m`, the hue in
/// sixths is `H6 = (g-b)/c`, `2 + (b-r)/c` or `4 + (r-g)/c` (by which channel is the max),
/// shifted by `6 δ` and wrapped into [0, 6); back to RGB with the closed form
/// ```text
/// out_n = v - c · clamp(min(k, 4 - k), 0, 1),   k = (n + H6) mod 6,   n = 5, 3, 1 for r, g, b
/// ```
/// Grey pixels (`c = 0`) come back unchanged.
pub fn hue(img: &mut Planes, delta: f32) {
    let n = img.h * img.w;
    let (r, rest) = img.data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    let d6 = 6.0 * delta;
    let wrap = |k: f32| {
        let k = if k < 0.0 { k + 6.0 } else { k };
        if k >= 6.0 {
            k - 6.0
        } else {
            k
        }
    };
    let chan = |k: f32, v: f32, c: f32| v - c * (k.min(4.0 - k)).clamp(0.0, 1.0);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (rr, gg, bb) = (*r, *g, *b);
        let v = rr.max(gg).max(bb);
        let m = rr.min(gg).min(bb);
        let c = v - m;
        let inv = if c > 0.0 { 1.0 / c } else { 0.0 };
        let hr = (gg - bb) * inv;
        let hg = 2.0 + (bb - rr) * inv;
        let hb = 4.0 + (rr - gg) * inv;
        let h = if v == rr {
            hr
        } else if v == gg {
            hg
        } else {
            hb
        };
        let h = wrap(h + d6); // h + d6 ∈ [-4, 8): one step each way suffices
        *r = chan(wrap(h + 5.0), v, c);
        *g = chan(wrap(h + 3.0), v, c);
        *b = chan(wrap(h + 1.0), v, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rgb() -> Planes {
        Planes::new(3, 2, 2, vec![0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.5, 0.6, 0.4, 0.4, 0.5, 0.95])
    }

    #[test]
    fn jitter_at_strength_zero_is_identity() {
        let j = ColorJitter { p: 1.0, ..ColorJitter::simclr(0.0) };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let mut img = rgb();
            j.apply(&mut img, &mut rng);
            assert_eq!(img, rgb());
        }
    }

    #[test]
    fn hue_roundtrip_and_full_turn() {
        let mut img = rgb();
        hue(&mut img, 1.0 / 3.0);
        // a third of a turn maps R→G→B: the red-dominant pixel 0 (0.1, 0.7, 0.4)... check a pure case
        let mut red = Planes::new(3, 1, 1, vec![0.8, 0.2, 0.2]);
        hue(&mut red, 1.0 / 3.0);
        assert!(
            (red.data[0] - 0.2).abs() < 1e-5
                && (red.data[1] - 0.8).abs() < 1e-5
                && (red.data[2] - 0.2).abs() < 1e-5,
            "{:?}",
            red.data
        );
        hue(&mut img, 2.0 / 3.0);
        for (a, b) in img.data.iter().zip(rgb().data) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn jitter_keeps_values_in_unit_range_and_grey_stays_grey() {
        let j = ColorJitter { p: 1.0, ..ColorJitter::simclr(1.0) };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let mut img = rgb();
            j.apply(&mut img, &mut rng);
            assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
            let mut g = Planes::new(1, 2, 2, vec![0.2, 0.4, 0.6, 0.8]);
            j.apply(&mut g, &mut rng);
            assert!(g.data.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        let mut c = Planes::new(1, 1, 2, vec![0.2, 0.6]);
        contrast(&mut c, 0.0);
        assert_eq!(c.data, vec![0.4, 0.4]);
    }

    /// Reference values from torchvision 0.x (its tensor path uses luma 0.2989 where we use 0.299,
    /// hence the 1e-3 tolerance):
    /// ```text
    /// x = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.5, 0.6, 0.4, 0.4, 0.5, 0.95]).reshape(3, 2, 2)
    /// F.adjust_hue(x, 0.13); F.adjust_hue(x, -0.41); F.adjust_saturation(x, 1.7); F.adjust_contrast(x, 0.6)
    /// ```
    #[test]
    fn adjustments_match_torchvision() {
        let cases: [(&str, f32, [f32; 12]); 4] = [
            ("hue", 0.13, [0.1, 0.9, 0.5, 0.507, 0.532, 0.546, 0.5, 0.3, 0.7, 0.2, 0.5, 0.95]),
            ("hue", -0.41, [0.7, 0.2, 0.5, 0.899, 0.124, 0.722, 0.5, 0.95, 0.1, 0.9, 0.5, 0.3]),
            (
                "saturation",
                1.7,
                [
                    0.0, 1.0, 0.50004, 0.12488, 0.84953, 0.03759, 0.50004, 0.63488, 0.33953,
                    0.37759, 0.50004, 1.0,
                ],
            ),
            (
                "contrast",
                0.6,
                [
                    0.25685, 0.73685, 0.49685, 0.37685, 0.61685, 0.31685, 0.49685, 0.55685,
                    0.43685, 0.43685, 0.49685, 0.76685,
                ],
            ),
        ];
        for (op, f, want) in cases {
            let mut img = rgb();
            match op {
                "hue" => hue(&mut img, f),
                "saturation" => saturation(&mut img, f),
                _ => contrast(&mut img, f),
            }
            for (a, b) in img.data.iter().zip(want) {
                assert!((a - b).abs() < 1e-3, "{op} {f}: {:?} vs {want:?}", img.data);
            }
        }
    }
}
