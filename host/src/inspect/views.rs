//! `latent views [CONFIG] --out views.png`: the recipe before training on it. Rows are the
//! first images of the run's first batch; columns are the image and each of its views in the
//! first epochs, made exactly as the loader makes them (the same plugins, the same
//! `sample_seed(seed, epoch, image, view)`). `views.json` beside the PNG says which image and
//! seed each tile is.

use crate::config::Config;
use crate::data::{self, loader};
use crate::inspect::grid::{self, Row, Tile};
use crate::inspect::{check_png_path, json_path, shorten};
use crate::plugins::Registry;
use anyhow::{ensure, Context as _, Result};
use latent_abi::PluginKind;
use serde::Serialize;
use std::path::PathBuf;

/// What `latent views` is asked.
#[derive(Clone, Debug)]
pub struct ViewsArgs {
    /// The experiment config (none: the default experiment).
    pub config: Option<PathBuf>,
    /// `--set` overrides.
    pub sets: Vec<String>,
    /// The PNG to write (`views.json` is written beside it).
    pub out: PathBuf,
    /// Source images (rows).
    pub images: usize,
    /// Epochs whose views are shown (columns: views × epochs).
    pub epochs: u64,
    /// Enlargement of each pixel.
    pub scale: u32,
}

/// One row of `views.json`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Source {
    /// Index in the training split.
    pub index: usize,
    /// Its label (`None` when unlabeled).
    pub label: Option<i64>,
    /// `(epoch, view, seed)` of each view tile, left to right.
    pub seeds: Vec<(u64, usize, u64)>,
}

/// `views.json`.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    /// The split the images come from.
    pub dataset: String,
    /// The config's seed.
    pub seed: u64,
    /// Size of the PNG.
    pub png: (u32, u32),
    /// Pixel enlargement.
    pub scale: u32,
    /// The rows.
    pub images: Vec<Source>,
    /// Top-left pixel of each tile in the PNG, per row: the image, then its views.
    pub tiles: grid::Layout,
}

/// Runs `latent views`.
pub fn run(reg: &Registry, args: &ViewsArgs) -> Result<Summary> {
    check_png_path(&args.out)?;
    ensure!((1..=64).contains(&args.images), "--images must be 1 to 64, got {}", args.images);
    ensure!((1..=8).contains(&args.epochs), "--epochs must be 1 to 8, got {}", args.epochs);
    ensure!((1..=16).contains(&args.scale), "--scale must be 1 to 16, got {}", args.scale);
    let cfg = Config::load(args.config.as_deref(), &args.sets)?;
    let splits = crate::data::open_data(&cfg)?;
    let train = &splits.train;
    let views = crate::data::build_views(reg, &cfg)?;
    let needs_labels = reg
        .get(&cfg.objective.plugin, PluginKind::Objective)
        .context("config key `objective`")?
        .manifest
        .needs_labels;
    let base = crate::data::loader_config(&cfg, train, needs_labels)?;
    let first = loader::epoch_batches(train, &base)
        .with_context(|| format!("config key `train.batch_size` ({})", cfg.train.batch_size))?;
    let indices: Vec<usize> = first[0].iter().copied().take(args.images).collect();
    let label = |i: usize| train.labels.get(i).copied();
    let class = |i: usize| {
        label(i).map(|l| train.classes.get(l as usize).cloned().unwrap_or_else(|| l.to_string()))
    };

    let mut rows: Vec<Row> = indices
        .iter()
        .map(|&i| {
            let src = data::loader::decode(train, &[i]);
            let name = class(i).map_or(format!("#{i}"), |c| format!("#{i} {c}"));
            Row {
                label: name,
                tiles: vec![Tile {
                    shape: train.shape,
                    pixels: src.data,
                    caption: "image".into(),
                    frame: None,
                }],
            }
        })
        .collect();
    let mut sources: Vec<Source> =
        indices.iter().map(|&i| Source { index: i, label: label(i), seeds: vec![] }).collect();
    let mut columns = vec!["image".to_string()];
    for epoch in 0..args.epochs {
        let lc = loader::LoaderConfig { epoch, ..base.clone() };
        let batch = loader::build_batch(train, &views, &lc, indices.clone())
            .with_context(|| format!("augmenting the images of epoch {epoch}"))?;
        for (v, t) in batch.views.iter().enumerate() {
            columns.push(format!("epoch {epoch}, view {v}"));
            let [_, c, h, w] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
            for (r, &i) in indices.iter().enumerate() {
                let seed = loader::sample_seed(lc.seed, epoch, i, v);
                rows[r].tiles.push(Tile {
                    shape: [c, h, w],
                    pixels: t.data[r * c * h * w..(r + 1) * c * h * w].to_vec(),
                    caption: format!("e{epoch} v{v}"),
                    frame: None,
                });
                sources[r].seeds.push((epoch, v, seed));
            }
        }
    }
    let recipe: Vec<String> =
        cfg.augment.iter().map(|a| format!("{} {}", a.plugin, a.config)).collect();
    let title = format!(
        "views of {} as the loader makes them (seed {}): {}",
        train.name,
        cfg.train.seed,
        shorten(&recipe.join("; "), 110)
    );
    let (png, tiles) = grid::draw(&args.out, &title, &columns, &rows, args.scale)?;
    let summary = Summary {
        dataset: train.name.clone(),
        seed: cfg.train.seed,
        png,
        scale: args.scale,
        images: sources,
        tiles,
    };
    let json = json_path(&args.out);
    std::fs::write(&json, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(summary)
}
