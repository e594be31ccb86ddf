//! `cutout`, an example augmentation plugin in one file: cutout / random erasing.
//!
//! - \[0\] DeVries, Taylor, Improved Regularization of Convolutional Neural Networks with
//!   Cutout, 2017, <https://arxiv.org/abs/1708.04552>
//! - \[1\] Zhong et al., Random Erasing Data Augmentation, 2017,
//!   <https://arxiv.org/abs/1708.04896> (torchvision's `RandomErasing`)
//!
//! ```text
//! with probability p, `holes` times:
//!     area  a ~ U(scale) · H · W,   aspect r = exp(U(log ratio))
//!     h = round(sqrt(a · r)), w = round(sqrt(a / r))            (clipped to the image)
//!     top ~ U{0 .. H − h}, left ~ U{0 .. W − w}
//!     x[c, top..top+h, left..left+w] = value                    every channel c
//! ```
//! `value` is a constant (0: cutout's black square), or `"random"` for uniform noise in [0, 1]
//! per pixel and channel (random erasing). The shape never changes.
//!
//! An augmentation is a *pure function of (image, seed)*: the host's loader threads call
//! `apply` concurrently on one shared instance (`Send + Sync`), in any order, and a run must
//! be reproducible. So all randomness comes from a small generator seeded with the call's
//! `seed` (SplitMix64, no dependency), never from thread-local or global state, and `apply`
//! takes `&self`.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `p` | 1.0 | probability of erasing at all |
//! | `holes` | 1 | rectangles per image |
//! | `scale` | `[0.02, 0.33]` | area of each rectangle, as a fraction of the image (torchvision's default) |
//! | `ratio` | `[0.3, 3.3]` | aspect ratio h/w range (torchvision's default) |
//! | `value` | `0.0` | fill: a number, or `"random"` |

use latent_sdk::prelude::*;

/// The fill of an erased rectangle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Fill {
    /// A constant value.
    Value(f32),
    /// `"random"`: uniform noise in [0, 1].
    Named(String),
}

/// The `cutout` config; see the crate documentation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Probability of erasing.
    pub p: f64,
    /// Rectangles per image.
    pub holes: usize,
    /// Area range, as a fraction of the image.
    pub scale: [f64; 2],
    /// Aspect-ratio (h/w) range.
    pub ratio: [f64; 2],
    /// Fill value or `"random"`.
    pub value: Fill,
}

impl Default for Config {
    fn default() -> Self {
        Config { p: 1.0, holes: 1, scale: [0.02, 0.33], ratio: [0.3, 3.3], value: Fill::Value(0.0) }
    }
}

/// SplitMix64: a tiny, good-enough generator for choosing rectangles, seeded per call.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..=n.
    fn upto(&mut self, n: usize) -> usize {
        (self.next_u64() % (n as u64 + 1)) as usize
    }
}

/// The `cutout` augmentation.
pub struct Cutout {
    cfg: Config,
    random_fill: bool,
}

impl Plugin for Cutout {
    type Config = Config;
    const NAME: &'static str = "cutout";
    const DESCRIPTION: &'static str =
        "cutout / random erasing of rectangles, constant or noise fill (example)";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        ensure!((0.0..=1.0).contains(&cfg.p), "p must be in [0, 1], got {}", cfg.p);
        let [s0, s1] = cfg.scale;
        ensure!(
            0.0 < s0 && s0 <= s1 && s1 <= 1.0,
            "scale must satisfy 0 < lo <= hi <= 1, got {:?}",
            cfg.scale
        );
        let [r0, r1] = cfg.ratio;
        ensure!(
            0.0 < r0 && r0 <= r1 && r1.is_finite(),
            "ratio must satisfy 0 < lo <= hi, got {:?}",
            cfg.ratio
        );
        let random_fill = match &cfg.value {
            Fill::Value(v) => {
                ensure!(v.is_finite(), "value must be finite, got {v}");
                false
            }
            Fill::Named(s) if s == "random" => true,
            Fill::Named(s) => bail!("value must be a number or \"random\", got {s:?}"),
        };
        Ok(Cutout { cfg, random_fill })
    }
}

impl AugmentationPlugin for Cutout {
    fn output_shape(&self, input: [usize; 3]) -> anyhow::Result<[usize; 3]> {
        Ok(input)
    }

    fn apply(&self, image: &[f32], [c, h, w]: [usize; 3], seed: u64) -> anyhow::Result<Vec<f32>> {
        ensure!(
            image.len() == c * h * w,
            "image of shape [{c}, {h}, {w}] needs {} values, got {}",
            c * h * w,
            image.len()
        );
        let mut out = image.to_vec();
        let mut rng = SplitMix64(seed);
        if h == 0 || w == 0 || rng.unit() >= self.cfg.p {
            return Ok(out);
        }
        let (lr0, lr1) = (self.cfg.ratio[0].ln(), self.cfg.ratio[1].ln());
        for _ in 0..self.cfg.holes {
            let area = rng.range(self.cfg.scale[0], self.cfg.scale[1]) * (h * w) as f64;
            let r = rng.range(lr0, lr1).exp();
            let eh = ((area * r).sqrt().round() as usize).clamp(1, h);
            let ew = ((area / r).sqrt().round() as usize).clamp(1, w);
            let (top, left) = (rng.upto(h - eh), rng.upto(w - ew));
            for ch in 0..c {
                for y in top..top + eh {
                    let row = &mut out[(ch * h + y) * w + left..(ch * h + y) * w + left + ew];
                    for v in row {
                        *v = match self.cfg.value {
                            Fill::Value(x) if !self.random_fill => x,
                            _ => rng.unit() as f32,
                        };
                    }
                }
            }
        }
        Ok(out)
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [], augmentations: [Cutout]);

#[cfg(test)]
mod tests {
    use super::*;

    fn cutout(cfg: Config) -> Cutout {
        Cutout::new(cfg, &Context::default()).unwrap()
    }

    #[test]
    fn same_seed_same_view_and_only_a_rectangle_changes() {
        let a = cutout(Config::default());
        let img: Vec<f32> = (0..3 * 10 * 12).map(|i| 0.5 + (i % 7) as f32 * 0.01).collect();
        let x = a.apply(&img, [3, 10, 12], 42).unwrap();
        assert_eq!(x, a.apply(&img, [3, 10, 12], 42).unwrap(), "a pure function of (image, seed)");
        assert_ne!(x, a.apply(&img, [3, 10, 12], 43).unwrap());
        let changed: Vec<usize> = (0..img.len()).filter(|&i| x[i] != img[i]).collect();
        assert!(!changed.is_empty() && changed.iter().all(|&i| x[i] == 0.0));
        // the same pixels in every channel
        let per = 10 * 12;
        assert_eq!(changed.len() % 3, 0);
        assert!(changed.iter().all(|&i| x[(i + per) % (3 * per)] == 0.0));
    }

    #[test]
    fn bad_configs_are_refused() {
        let e = Cutout::new(
            Config { value: Fill::Named("noise".into()), ..Config::default() },
            &Context::default(),
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("\"random\""), "{e}");
        assert!(Cutout::new(Config { p: 2.0, ..Config::default() }, &Context::default()).is_err());
    }
}
