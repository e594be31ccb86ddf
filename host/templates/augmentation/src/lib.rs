//! `template-augmentation`: an augmentation plugin.
//!
//! A random horizontal flip with probability `p`. An augmentation is a pure function of
//! (image, seed): loader threads share one instance and call `apply` concurrently, so all
//! randomness comes from the call's `seed` (here a SplitMix64 step), never from global state.
//!
//! # Config (JSON, every key optional)
//! | key | default | meaning |
//! |---|---|---|
//! | `p` | 0.5 | probability of flipping |

use latent_sdk::prelude::*;

/// The config. Omitted keys take the defaults; unknown keys are refused by name.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Probability of flipping.
    pub p: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { p: 0.5 }
    }
}

/// The augmentation.
pub struct TemplateAugmentation {
    cfg: Config,
}

/// Uniform in [0, 1) from a seed (SplitMix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

impl Plugin for TemplateAugmentation {
    type Config = Config;
    const NAME: &'static str = "template-augmentation";
    const DESCRIPTION: &'static str = "random horizontal flip";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        ensure!((0.0..=1.0).contains(&cfg.p), "p must be in [0, 1], got {}", cfg.p);
        Ok(TemplateAugmentation { cfg })
    }
}

impl AugmentationPlugin for TemplateAugmentation {
    fn output_shape(&self, input: [usize; 3]) -> anyhow::Result<[usize; 3]> {
        Ok(input)
    }

    fn apply(&self, image: &[f32], [_c, _h, w]: [usize; 3], seed: u64) -> anyhow::Result<Vec<f32>> {
        let mut out = image.to_vec();
        if w > 0 && unit(seed) < self.cfg.p {
            out.chunks_mut(w).for_each(|row| row.reverse());
        }
        Ok(out)
    }
}

latent_sdk::export_plugins!(objectives: [], encoders: [], augmentations: [TemplateAugmentation]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_view() {
        let a = TemplateAugmentation::new(Config::default(), &Context::default()).unwrap();
        let img: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        assert_eq!(a.apply(&img, [1, 3, 4], 9).unwrap(), a.apply(&img, [1, 3, 4], 9).unwrap());
    }
}
