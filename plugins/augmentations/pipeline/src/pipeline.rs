//! The `pipeline` plugin: a preset (SimCLR, BYOL's two views, small grey images, or nothing) or an explicit list
//! of ops, applied to one image with randomness drawn from a ChaCha8 generator seeded with the
//! call's seed (so a view is a pure function of the image and the seed).
//!
//! # Config (JSON; unknown keys refused)
//! | key | default | meaning |
//! |---|---|---|
//! | `preset` | `"simclr"` | `"simclr"`, `"byol"`, `"dino"`, `"grey"` or `"none"` |
//! | `view` | `0` | BYOL's asymmetric view, 0 or 1; DINO's global view 0 or 1, or 2 for a local crop (ignored by the other presets) |
//! | `size` | `null` | output side (square); `null`: the input's height and width |
//! | `strength` | `1.0` | SimCLR's colour-jitter strength s (the paper used 0.5 for CIFAR-10) |
//! | `ops` | `null` | explicit list of ops, replacing the preset |
//! | `normalize` | `null` | `{"mean": [..], "std": [..]}` applied last (1 value or one per channel) |
//!
//! Ops are objects tagged by `op`, each with its own defaults (see the op's module):
//! `{"op": "crop", "scale": [0.08, 1], "ratio": [0.75, 1.333]}`, `{"op": "flip", "p": 0.5}`,
//! `{"op": "jitter", "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8}`,
//! `{"op": "grayscale", "p": 0.2}`, `{"op": "blur", "sigma": [0.1, 2], "kernel_frac": 0.1, "p": 0.5}`,
//! `{"op": "solarize", "threshold": 0.5, "p": 0.2}`, `{"op": "normalize", "mean": [..], "std": [..]}`.
//!
//! # Presets
//! ```text
//! simclr          crop(0.08–1, 3/4–4/3) → flip(0.5) → jitter(0.8s, 0.8s, 0.8s, 0.2s; p 0.8)
//!                 → grayscale(0.2) → blur(σ 0.1–2, 10%; p 0.5)
//! byol, view 0    crop(0.08–1) → flip(0.5) → jitter(0.4, 0.4, 0.2, 0.1; p 0.8) → grayscale(0.2)
//!                 → blur(p 1.0) → solarize(p 0.0)
//! byol, view 1    the same with blur(p 0.1) → solarize(p 0.2)
//! dino, view 0    crop(0.4–1) → flip(0.5) → jitter(0.4, 0.4, 0.2, 0.1; p 0.8) → grayscale(0.2)
//!                 → blur(p 1.0)                                   (the first global crop)
//! dino, view 1    the same with blur(p 0.1) → solarize(p 0.2)     (the second global crop)
//! dino, view 2    crop(0.05–0.4) → … → blur(p 0.5)                (a local crop: give it a
//!                 smaller `size`, 96 for 224-pixel globals; 12 for 28, 16 for 32)
//! grey            crop(GREY_SCALE–1, 3/4–4/3) → jitter(brightness GREY_JITTER, contrast GREY_JITTER; p 0.8)
//! none            nothing (only the resize to `size` and `normalize`, when given)
//! ```
//! The crop resamples to the output size. When the op list has no crop and `size` differs
//! from the input, the image is first resized whole (antialiased bilinear).
//!
//! Images have 1 or 3 channels and any size; on grey images saturation, hue and grayscale do
//! nothing. Values stay in [0, 1] unless `normalize` is used.

use crate::blur::GaussianBlur;
use crate::crop::RandomResizedCrop;

/// The largest output side `size` may ask for.
pub const MAX_SIZE: usize = 8192;
use crate::flip::HorizontalFlip;
use crate::grayscale::RandomGrayscale;
use crate::jitter::ColorJitter;
use crate::normalize::Normalize;
use crate::planes::{resize_box, Planes};
use crate::solarize::RandomSolarize;
use latent_sdk::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One op of an explicit list, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// [`RandomResizedCrop`] to the output size.
    Crop(RandomResizedCrop),
    /// [`HorizontalFlip`].
    Flip(HorizontalFlip),
    /// [`ColorJitter`].
    Jitter(ColorJitter),
    /// [`RandomGrayscale`].
    Grayscale(RandomGrayscale),
    /// [`GaussianBlur`].
    Blur(GaussianBlur),
    /// [`RandomSolarize`].
    Solarize(RandomSolarize),
    /// [`Normalize`].
    Normalize(Normalize),
}

impl Op {
    fn validate(&self) -> anyhow::Result<()> {
        match self {
            Op::Crop(o) => o.validate(),
            Op::Flip(o) => o.validate(),
            Op::Jitter(o) => o.validate(),
            Op::Grayscale(o) => o.validate(),
            Op::Blur(o) => o.validate(),
            Op::Solarize(o) => o.validate(),
            Op::Normalize(o) => o.validate(),
        }
    }
}

/// The `pipeline` config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `"simclr"` (default), `"byol"`, `"grey"` or `"none"`.
    pub preset: Preset,
    /// BYOL view, 0 (default) or 1.
    pub view: u32,
    /// Output side; `None` (default) keeps the input's height and width.
    pub size: Option<usize>,
    /// SimCLR colour-jitter strength, default 1.0.
    pub strength: f32,
    /// Explicit ops replacing the preset.
    pub ops: Option<Vec<Op>>,
    /// Normalization applied last.
    pub normalize: Option<Normalize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            preset: Preset::Simclr,
            view: 0,
            size: None,
            strength: 1.0,
            ops: None,
            normalize: None,
        }
    }
}

/// A named recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// SimCLR's ImageNet recipe (Chen et al. 2020), jitter scaled by `strength`.
    Simclr,
    /// BYOL's two asymmetric views (Grill et al. 2020).
    Byol,
    /// DINO's multi-crop views (Caron et al. 2021; lightly's `DINOTransform`): two global crops
    /// (`view` 0 and 1) and local crops (`view` 2).
    Dino,
    /// Small grey images such as MNIST digits: a milder crop, brightness and contrast only, no
    /// flip (a flipped digit is another symbol or none) and no blur (at 28 pixels a blur of
    /// σ up to 2 erases strokes). Chosen by measurement: bench/README.md, "The grey preset".
    Grey,
    /// Nothing but the resize to `size` and `normalize`.
    None,
}

/// Smallest crop area of the `grey` preset (a share of the image).
pub const GREY_SCALE: f32 = 0.3;
/// Brightness and contrast strength of the `grey` preset.
pub const GREY_JITTER: f32 = 0.4;

/// BYOL's and DINO's colour jitter (brightness, contrast 0.4; saturation 0.2; hue 0.1; p 0.8).
const BYOL_JITTER: ColorJitter =
    ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1, p: 0.8 };

/// The ops of a preset.
pub fn preset(name: Preset, view: u32, strength: f32) -> Vec<Op> {
    match name {
        Preset::Simclr => vec![
            Op::Crop(RandomResizedCrop::default()),
            Op::Flip(HorizontalFlip { p: 0.5 }),
            Op::Jitter(ColorJitter::simclr(strength)),
            Op::Grayscale(RandomGrayscale { p: 0.2 }),
            Op::Blur(GaussianBlur { p: 0.5, ..Default::default() }),
        ],
        Preset::Byol => {
            let (blur, sol) = if view == 0 { (1.0, 0.0) } else { (0.1, 0.2) };
            vec![
                Op::Crop(RandomResizedCrop::default()),
                Op::Flip(HorizontalFlip { p: 0.5 }),
                Op::Jitter(BYOL_JITTER),
                Op::Grayscale(RandomGrayscale { p: 0.2 }),
                Op::Blur(GaussianBlur { p: blur, ..Default::default() }),
                Op::Solarize(RandomSolarize { threshold: 0.5, p: sol }),
            ]
        }
        Preset::Dino => {
            let (scale, blur, sol) = match view {
                0 => ([0.4, 1.0], 1.0, 0.0),
                1 => ([0.4, 1.0], 0.1, 0.2),
                _ => ([0.05, 0.4], 0.5, 0.0),
            };
            let mut ops = vec![
                Op::Crop(RandomResizedCrop { scale, ..Default::default() }),
                Op::Flip(HorizontalFlip { p: 0.5 }),
                Op::Jitter(BYOL_JITTER),
                Op::Grayscale(RandomGrayscale { p: 0.2 }),
                Op::Blur(GaussianBlur { p: blur, ..Default::default() }),
            ];
            if sol > 0.0 {
                ops.push(Op::Solarize(RandomSolarize { threshold: 0.5, p: sol }));
            }
            ops
        }
        Preset::Grey => vec![
            Op::Crop(RandomResizedCrop { scale: [GREY_SCALE, 1.0], ..Default::default() }),
            Op::Jitter(ColorJitter {
                brightness: GREY_JITTER,
                contrast: GREY_JITTER,
                saturation: 0.0,
                hue: 0.0,
                p: 0.8,
            }),
        ],
        Preset::None => vec![],
    }
}

/// The `pipeline` augmentation.
pub struct Pipeline {
    ops: Vec<Op>,
    size: Option<usize>,
}

impl Pipeline {
    /// The ops it applies, in order (normalization included).
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    fn check_channels(&self, c: usize) -> anyhow::Result<()> {
        ensure!(c == 1 || c == 3, "pipeline works on 1- or 3-channel images, got {c} channels");
        for op in &self.ops {
            if let Op::Normalize(n) = op {
                n.check_channels(c)?;
            }
        }
        Ok(())
    }

    /// Applies the ops to `img` with randomness from `seed`.
    pub fn run(&self, img: Planes, seed: u64) -> Planes {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (oh, ow) = self.size.map_or((img.h, img.w), |s| (s, s));
        let mut img = img;
        if (oh, ow) != (img.h, img.w) && !self.ops.iter().any(|o| matches!(o, Op::Crop(_))) {
            img = resize_box(&img, 0, 0, img.h, img.w, oh, ow);
        }
        // Filters are convex combinations but their f32 weights may sum to 1 ± 1 ulp: clamp
        // once, before the first normalization (or at the end), to keep values in [0, 1].
        let clamp = |img: &mut Planes| img.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        let mut normalized = false;
        for op in &self.ops {
            if matches!(op, Op::Normalize(_)) && !normalized {
                clamp(&mut img);
                normalized = true;
            }
            match op {
                Op::Crop(o) => img = o.apply(&img, oh, ow, &mut rng),
                Op::Flip(o) => o.apply(&mut img, &mut rng),
                Op::Jitter(o) => o.apply(&mut img, &mut rng),
                Op::Grayscale(o) => o.apply(&mut img, &mut rng),
                Op::Blur(o) => o.apply(&mut img, &mut rng),
                Op::Solarize(o) => o.apply(&mut img, &mut rng),
                Op::Normalize(o) => o.apply(&mut img),
            }
        }
        if !normalized {
            clamp(&mut img);
        }
        img
    }
}

impl Plugin for Pipeline {
    type Config = Config;
    const NAME: &'static str = "pipeline";
    const DESCRIPTION: &'static str = "random crop, flip, colour jitter, grayscale, blur, solarize, normalize: simclr, byol and dino presets or an explicit list";

    fn new(cfg: Config, _ctx: &Context) -> anyhow::Result<Self> {
        let views = if cfg.preset == Preset::Dino { 2 } else { 1 };
        ensure!(
            cfg.view <= views,
            "view must be 0 or 1{}, got {}",
            if views == 2 { " (global crops) or 2 (a local crop)" } else { "" },
            cfg.view
        );
        ensure!(
            cfg.strength >= 0.0 && cfg.strength.is_finite(),
            "strength must be >= 0, got {}",
            cfg.strength
        );
        ensure!(cfg.size != Some(0), "size must be at least 1");
        // a view of side s holds 3·s² values per image in every loader batch
        ensure!(
            cfg.size.is_none_or(|s| s <= MAX_SIZE),
            "size is {}; at most {MAX_SIZE} pixels is allowed",
            cfg.size.unwrap_or(0)
        );
        let base = preset(cfg.preset, cfg.view, cfg.strength);
        let mut ops = cfg.ops.unwrap_or(base);
        if let Some(n) = cfg.normalize {
            ops.push(Op::Normalize(n));
        }
        for op in &ops {
            op.validate()?;
        }
        Ok(Pipeline { ops, size: cfg.size })
    }
}

impl AugmentationPlugin for Pipeline {
    fn output_shape(&self, input: [usize; 3]) -> anyhow::Result<[usize; 3]> {
        let [c, h, w] = input;
        self.check_channels(c)?;
        ensure!(h > 0 && w > 0, "images must not be empty, got shape {input:?}");
        Ok(self.size.map_or([c, h, w], |s| [c, s, s]))
    }

    fn apply(&self, image: &[f32], shape: [usize; 3], seed: u64) -> anyhow::Result<Vec<f32>> {
        let [c, h, w] = shape;
        self.output_shape(shape)?;
        ensure!(
            image.len() == c * h * w,
            "image of shape {shape:?} needs {} values, got {}",
            c * h * w,
            image.len()
        );
        Ok(self.run(Planes::new(c, h, w, image.to_vec()), seed).data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> anyhow::Result<Pipeline> {
        Pipeline::new(serde_json::from_str(json)?, &Context::default())
    }

    fn image(c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..c * h * w).map(|i| ((i * 37) % 101) as f32 / 100.0).collect()
    }

    #[test]
    fn an_output_size_beyond_the_bound_is_refused_by_name() {
        // regression: size = 100000 aborted the process in the first batch's allocation
        let e = build(r#"{"size": 100000}"#).err().unwrap().to_string();
        assert!(e.contains("size is 100000") && e.contains("8192"), "{e}");
        assert!(build(r#"{"size": 8192}"#).is_ok());
    }

    /// DINO's preset: the two global crops differ as lightly's `DINOTransform` (blur 1.0, then
    /// blur 0.1 and solarize 0.2), the local crop takes 5–40 % of the image, and a fourth view
    /// (or a third for another preset) is refused naming the choices.
    #[test]
    fn dino_preset_has_two_global_views_and_a_local_one() {
        let ops = |v| preset(Preset::Dino, v, 1.0);
        let blur = |o: &[Op]| {
            o.iter().find_map(|o| match o {
                Op::Blur(b) => Some(b.p),
                _ => None,
            })
        };
        let sol = |o: &[Op]| {
            o.iter().find_map(|o| match o {
                Op::Solarize(s) => Some(s.p),
                _ => None,
            })
        };
        let crop = |o: &[Op]| {
            o.iter().find_map(|o| match o {
                Op::Crop(c) => Some(c.scale),
                _ => None,
            })
        };
        assert_eq!(
            (blur(&ops(0)), sol(&ops(0)), crop(&ops(0))),
            (Some(1.0), None, Some([0.4, 1.0]))
        );
        assert_eq!(
            (blur(&ops(1)), sol(&ops(1)), crop(&ops(1))),
            (Some(0.1), Some(0.2), Some([0.4, 1.0]))
        );
        assert_eq!(
            (blur(&ops(2)), sol(&ops(2)), crop(&ops(2))),
            (Some(0.5), None, Some([0.05, 0.4]))
        );
        let e = build(r#"{"preset": "dino", "view": 3}"#).err().unwrap().to_string();
        assert!(e.contains("2 (a local crop)"), "{e}");
        let e = build(r#"{"preset": "byol", "view": 2}"#).err().unwrap().to_string();
        assert!(e.contains("view must be 0 or 1, got 2"), "{e}");
        let local = build(r#"{"preset": "dino", "view": 2, "size": 12}"#).unwrap();
        assert_eq!(local.output_shape([1, 28, 28]).unwrap(), [1, 12, 12]);
    }

    #[test]
    fn presets_are_deterministic_per_seed_and_stay_in_range() {
        for cfg in [
            r#"{}"#,
            r#"{"preset": "byol"}"#,
            r#"{"preset": "byol", "view": 1, "size": 16}"#,
            r#"{"preset": "grey"}"#,
            r#"{"preset": "dino", "view": 1}"#,
            r#"{"preset": "dino", "view": 2, "size": 12}"#,
        ] {
            let p = build(cfg).unwrap();
            for &(c, h, w) in &[(3usize, 32usize, 32usize), (1, 28, 28), (3, 7, 40)] {
                let x = image(c, h, w);
                let a = p.apply(&x, [c, h, w], 11).unwrap();
                assert_eq!(a, p.apply(&x, [c, h, w], 11).unwrap());
                assert_ne!(a, p.apply(&x, [c, h, w], 12).unwrap());
                assert_eq!(a.len(), p.output_shape([c, h, w]).unwrap().iter().product::<usize>());
                assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "{cfg}");
            }
        }
    }

    #[test]
    fn none_preset_is_identity_and_resizes_when_asked() {
        let p = build(r#"{"preset": "none"}"#).unwrap();
        let x = image(3, 5, 6);
        assert_eq!(p.apply(&x, [3, 5, 6], 1).unwrap(), x);
        let p =
            build(r#"{"preset": "none", "size": 3, "normalize": {"mean": [0.5], "std": [0.5]}}"#)
                .unwrap();
        assert_eq!(p.output_shape([1, 6, 6]).unwrap(), [1, 3, 3]);
        let y = p.apply(&[1.0; 36], [1, 6, 6], 0).unwrap();
        assert!(y.iter().all(|v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn explicit_ops_parse_with_defaults_and_refuse_unknown_keys() {
        let p = build(r#"{"ops": [{"op": "crop", "scale": [0.5, 1.0]}, {"op": "flip", "p": 1.0}, {"op": "solarize"}]}"#).unwrap();
        assert_eq!(
            p.ops()[0],
            Op::Crop(RandomResizedCrop { scale: [0.5, 1.0], ..Default::default() })
        );
        assert_eq!(p.ops()[2], Op::Solarize(RandomSolarize::default()));
        assert!(build(r#"{"ops": [{"op": "flip", "q": 1.0}]}"#).is_err());
        assert!(build(r#"{"ops": [{"op": "rotate"}]}"#).is_err());
        assert!(build(r#"{"bogus": 1}"#).is_err());
        let e = build(r#"{"preset": "moco"}"#).err().unwrap().to_string();
        assert!(
            e.contains("moco") && e.contains("grey"),
            "the error names the presets there are: {e}"
        );
        assert!(build(r#"{"view": 2}"#).is_err());
        assert!(build(r#"{"ops": [{"op": "flip", "p": 2.0}]}"#).is_err());
        let p = build(r#"{"normalize": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}}"#).unwrap();
        assert!(p.output_shape([1, 8, 8]).is_err());
        assert!(p.output_shape([4, 8, 8]).is_err());
    }

    #[test]
    fn grey_preset_neither_flips_nor_blurs() {
        let ops = build(r#"{"preset": "grey"}"#).unwrap().ops().to_vec();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0],
            Op::Crop(RandomResizedCrop { scale: [GREY_SCALE, 1.0], ..Default::default() })
        );
        assert!(matches!(ops[1], Op::Jitter(ColorJitter { saturation: 0.0, hue: 0.0, .. })));
        assert!(!ops.iter().any(|o| matches!(o, Op::Flip(_) | Op::Blur(_) | Op::Grayscale(_))));
    }

    #[test]
    fn byol_views_differ_in_blur_and_solarize() {
        let v0 = preset(Preset::Byol, 0, 1.0);
        let v1 = preset(Preset::Byol, 1, 1.0);
        assert_eq!(v0[4], Op::Blur(GaussianBlur { p: 1.0, ..Default::default() }));
        assert_eq!(v1[4], Op::Blur(GaussianBlur { p: 0.1, ..Default::default() }));
        assert_eq!(v0[5], Op::Solarize(RandomSolarize { threshold: 0.5, p: 0.0 }));
        assert_eq!(v1[5], Op::Solarize(RandomSolarize { threshold: 0.5, p: 0.2 }));
    }
}
