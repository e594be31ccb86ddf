//! The data side of an experiment config: the dataset it names (with its size limits), the
//! augmentation of each view, the shape the encoder sees and the loader settings. `latent
//! train`, `eval`, `embed`, `views`, `neighbours` and `map` all build their data from here.

use crate::config::Config;
use crate::data::{self, Dataset};
use crate::plugins::{Augment, Registry};
use anyhow::{bail, Context as _, Result};
use latent_abi::Context;
use serde_json::Value;

/// Opens the dataset of `cfg.data`, applying its size limits.
pub fn open_data(cfg: &Config) -> Result<data::Splits> {
    let mut splits = data::open_with(
        &cfg.data.source,
        &data::OpenOptions { skip_bad: cfg.data.skip_bad_images },
    )
    .with_context(|| format!("config key `data.source` ({})", cfg.data.source))?;
    splits.train.truncate(cfg.data.max_train_images);
    if let Some(t) = &mut splits.test {
        t.truncate(cfg.data.max_test_images);
    }
    Ok(splits)
}

/// Loads the augmentation pipeline of every view.
pub fn build_views(reg: &Registry, cfg: &Config) -> Result<Vec<Augment>> {
    let ctx = Context { seed: cfg.train.seed, ..Default::default() };
    cfg.augment
        .iter()
        .enumerate()
        .map(|(i, a)| {
            reg.augmentation(&a.plugin, &a.config, &ctx)
                .with_context(|| format!("config key `augment[{i}]`"))
        })
        .collect()
}

/// A warning when a view's recipe does not fit the data: the `grey` preset (made for small grey
/// images, no hue, saturation or grayscale) on colour images.
pub fn recipe_warning(cfg: &Config, shape: [usize; 3]) -> Option<String> {
    let grey: Vec<String> = cfg
        .augment
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            a.plugin == "pipeline"
                && a.config.get("ops").is_none()
                && a.config.get("preset").and_then(Value::as_str) == Some("grey")
        })
        .map(|(i, _)| format!("augment[{i}]"))
        .collect();
    (shape[0] == 3 && !grey.is_empty()).then(|| {
        format!(
            "{} use the `grey` preset, made for small grey images, but {} has colour images ({shape:?}); \
             for natural images use preset = \"simclr\" (examples/configs/simclr-cifar10.toml)",
            grey.join(", "),
            cfg.data.source
        )
    })
}

/// The image shape after augmentation: every view's, or with `global_views` > 0 (multi-crop)
/// the global views', which must agree; the other views may be of another size.
pub fn view_shape(views: &[Augment], shape: [usize; 3], global_views: usize) -> Result<[usize; 3]> {
    let mut out = None;
    for (i, v) in views.iter().enumerate() {
        let s = v.output_shape(shape)?;
        match out {
            None => out = Some(s),
            Some(o) if o != s && (global_views == 0 || i < global_views) => {
                let (which, fix) = if global_views == 0 {
                    ("", "give every view the same size, or set train.global_views for multi-crop")
                } else {
                    (" (a global view)", "the global views must share one size")
                };
                bail!("augment[{i}]{which} gives images of shape {s:?} but augment[0] gives {o:?}: {fix}")
            }
            Some(o) if o[0] != s[0] => bail!(
                "augment[{i}] gives images of {} channels but augment[0] gives {}",
                s[0],
                o[0]
            ),
            _ => {}
        }
    }
    out.context("no views")
}

/// The loader settings of a run (epoch 0): batch size, seed, threads, and the sampler (P
/// classes × K images for an objective that needs labels, else a seeded shuffle).
pub fn loader_config(
    cfg: &Config,
    train: &Dataset,
    needs_labels: bool,
) -> Result<data::loader::LoaderConfig> {
    let bs = cfg.train.batch_size;
    let sampler = if needs_labels {
        // P classes x K images: P from the config, else every class (at most bs / 2).
        let classes = train.classes.len().max(1);
        let p = if cfg.train.classes_per_batch > 0 {
            cfg.train.classes_per_batch
        } else {
            classes.min(bs / 2).max(1)
        };
        if p > classes {
            bail!("train.classes_per_batch is {p} but {} has {classes} classes", train.name);
        }
        data::loader::Sampler::ClassBalanced { classes: p, per_class: (bs / p).max(1) }
    } else {
        data::loader::Sampler::Shuffle
    };
    // a data-parallel run: the batch is global, and each rank builds the views of its slice
    let world = crate::dist::world();
    let global = match sampler {
        data::loader::Sampler::ClassBalanced { classes, per_class } => classes * per_class,
        _ => bs,
    };
    if !global.is_multiple_of(world.size()) {
        bail!(
            "config key `train.batch_size`: the global batch of {global} images does not split evenly among {} ranks (mpirun -np); choose a batch size that {} divides",
            world.size(),
            world.size()
        );
    }
    let threads = match cfg.data.threads {
        0 if world.is_distributed() => world.threads(),
        t => t,
    };
    Ok(data::loader::LoaderConfig {
        batch_size: bs,
        seed: cfg.train.seed,
        epoch: 0,
        threads,
        prefetch: cfg.data.prefetch.max(1),
        drop_last: true,
        sampler,
        shard: (world.rank(), world.size()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grey_preset_on_colour_images_is_named_in_a_warning() {
        let mut cfg = Config::default();
        assert_eq!(
            recipe_warning(&cfg, [1, 28, 28]),
            None,
            "the default: grey preset, grey digits"
        );
        cfg.data.source = "cifar10:data/cifar".into();
        let w = recipe_warning(&cfg, [3, 32, 32]).expect("a warning");
        assert!(
            w.starts_with("augment[0], augment[1] use the `grey` preset")
                && w.contains("cifar10:data/cifar")
                && w.contains("simclr"),
            "{w}"
        );
        cfg.augment[0].config = serde_json::json!({"preset": "simclr"});
        cfg.augment[1].config = serde_json::json!({"preset": "grey", "ops": [{"op": "flip"}]});
        assert_eq!(recipe_warning(&cfg, [3, 32, 32]), None, "explicit ops replace the preset");
    }
}
