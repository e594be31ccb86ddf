//! `latent map RUN --out map.png`: a 2-D t-SNE map of the test embeddings coloured by class,
//! the trained encoder beside the same encoder at random initialisation (the report's
//! baseline). Features are L2-normalized first (the geometry kNN uses). Each panel's title
//! gives the 10-NN accuracy of the classes inside the map, a number for how well the map
//! separates them. `map.json` beside the PNG holds every point's index, label and position.
//!
//! t-SNE is [`bhtsne`]'s FIt-SNE with a spectral start, run on one thread, so the same run
//! gives the same map every time. Chosen by a measured comparison on 10,000 points
//! (docs/ARCHITECTURE.md, "latent map").

use crate::eval::{self, commands as evaluate, report};
use crate::inspect::plot::PALETTE;
use crate::inspect::{check_png_path, json_path, shorten};
use crate::plugins::Registry;
use crate::train::learner;
use anyhow::{anyhow, ensure, Context as _, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `latent map` is asked.
#[derive(Clone, Debug)]
pub struct MapArgs {
    /// Run directory, checkpoint directory or model.safetensors.
    pub run: PathBuf,
    /// Another dataset (same sources as `data.source`).
    pub data: Option<String>,
    /// The PNG to write.
    pub out: PathBuf,
    /// Largest number of test images mapped (evenly spaced over the split).
    pub max_points: usize,
    /// t-SNE perplexity.
    pub perplexity: f32,
    /// t-SNE iterations.
    pub epochs: usize,
}

/// `map.json`.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    /// The split mapped.
    pub split: String,
    /// Index of each point in the split.
    pub indices: Vec<usize>,
    /// Label of each point (empty when unlabeled).
    pub labels: Vec<i64>,
    /// `(x, y)` of each point under the trained encoder.
    pub trained: Vec<(f32, f32)>,
    /// `(x, y)` of each point under the random-init encoder.
    pub random_init: Vec<(f32, f32)>,
    /// 10-NN accuracy of the labels in each 2-D map: (trained, random init).
    pub map_knn: Option<(f64, f64)>,
    /// Seconds t-SNE took for both maps.
    pub tsne_seconds: f64,
    /// Size of the PNG.
    pub png: (u32, u32),
}

/// A 2-D t-SNE of `x` (`[N, d]`), one thread, spectral start: deterministic.
pub fn tsne(x: &[f32], d: usize, perplexity: f32, epochs: usize) -> Result<Vec<(f32, f32)>> {
    let n = x.len() / d.max(1);
    ensure!(n >= 4, "t-SNE needs at least 4 points, got {n}");
    // perplexity must leave 3·perplexity neighbours in the data
    let perplexity = perplexity.min((n as f32 - 1.0) / 3.0);
    let samples: Vec<&[f32]> = x.chunks_exact(d).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .context("starting the t-SNE thread")?;
    let emb = pool.install(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut t = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
            t.perplexity(perplexity).epochs(epochs).spectral_init();
            t.fit_sne(|a, b| {
                a.iter().zip(b.iter()).map(|(p, q)| (p - q) * (p - q)).sum::<f32>().sqrt()
            });
            t.embedding()
        }))
    });
    let emb = emb.map_err(|_| anyhow!("t-SNE failed on {n} points of dimension {d}"))?;
    ensure!(emb.iter().all(|v| v.is_finite()), "t-SNE gave non-finite coordinates");
    Ok(emb.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Share of points whose 10 nearest others in the map mostly (by vote) have its label.
pub fn map_knn(points: &[(f32, f32)], labels: &[i64]) -> f64 {
    let k = 10.min(points.len().saturating_sub(1)).max(1);
    let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let mut right = 0;
    for (i, p) in points.iter().enumerate() {
        let mut d: Vec<(f32, usize)> = points
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, q)| ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2), j))
            .collect();
        d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        let mut votes = vec![0usize; classes];
        d[..k].iter().for_each(|&(_, j)| votes[labels[j] as usize] += 1);
        let best = (0..classes).max_by_key(|&c| (votes[c], std::cmp::Reverse(c))).unwrap_or(0);
        right += usize::from(best as i64 == labels[i]);
    }
    right as f64 / points.len().max(1) as f64
}

/// Size of map.png: two square panels and the class legend.
pub const SIZE: (u32, u32) = (1420, 700);

fn draw(
    path: &Path,
    panels: [(&str, &[(f32, f32)]); 2],
    labels: &[i64],
    classes: &[String],
) -> Result<()> {
    crate::inspect::plot::register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (maps, legend) = root.split_horizontally(1400 - 100);
    for (area, (title, pts)) in maps.split_evenly((1, 2)).iter().zip(panels) {
        let (x0, x1) = pts.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts.iter().fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (px, py) = (((x1 - x0) * 0.03).max(1e-3), ((y1 - y0) * 0.03).max(1e-3));
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
            .map_err(|e| err(&e))?;
        chart.configure_mesh().disable_mesh().disable_axes().draw().map_err(|e| err(&e))?;
        let color = |i: usize| labels.get(i).map_or(BLACK, |&l| PALETTE[l.rem_euclid(10) as usize]);
        chart
            .draw_series(
                pts.iter().enumerate().map(|(i, &p)| Circle::new(p, 2, color(i).mix(0.8).filled())),
            )
            .map_err(|e| err(&e))?;
        area.draw(&Rectangle::new(
            [(10, 40), (area.dim_in_pixel().0 as i32 - 10, area.dim_in_pixel().1 as i32 - 10)],
            BLACK.mix(0.3).stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    }
    let mut seen: Vec<i64> = labels.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for (row, &l) in seen.iter().enumerate().take(30) {
        let y = 60 + 22 * row as i32;
        let name = classes.get(l as usize).cloned().unwrap_or_else(|| l.to_string());
        legend
            .draw(&Circle::new((14, y), 5, PALETTE[l.rem_euclid(10) as usize].filled()))
            .map_err(|e| err(&e))?;
        legend
            .draw(&Text::new(
                shorten(&name, 12),
                (26, y - 8),
                ("sans-serif", 14).into_font().color(&BLACK),
            ))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Runs `latent map`.
pub fn run(reg: &Registry, args: &MapArgs) -> Result<Summary> {
    check_png_path(&args.out)?;
    ensure!(
        (4..=20_000).contains(&args.max_points),
        "--max-points must be 4 to 20000, got {}",
        args.max_points
    );
    ensure!(
        args.perplexity > 0.0 && args.perplexity.is_finite(),
        "--perplexity must be > 0, got {}",
        args.perplexity
    );
    ensure!(
        (50..=10_000).contains(&args.epochs),
        "--epochs must be 50 to 10000, got {}",
        args.epochs
    );
    let mut cfg = evaluate::run_config(&args.run)?;
    if let Some(s) = &args.data {
        cfg.data.source = s.clone();
    }
    let splits = crate::data::open_data(&cfg)?;
    let test = splits
        .test
        .as_ref()
        .with_context(|| format!("{} has no test split to map", cfg.data.source))?;
    let n = args.max_points.min(test.len());
    ensure!(n >= 4, "{} has {} test images; a map needs at least 4", test.name, test.len());
    let indices: Vec<usize> = (0..n).map(|i| i * test.len() / n).collect();
    let mut part = crate::data::Dataset {
        name: test.name.clone(),
        shape: test.shape,
        classes: test.classes.clone(),
        ..Default::default()
    };
    for &i in &indices {
        part.images.extend_from_slice(test.image(i));
        if test.is_labeled() {
            part.labels.push(test.labels[i]);
        }
    }
    let mut trained = evaluate::load_encoder(reg, &cfg, &args.run, test.shape)?;
    let (mut f, d) = report::features(&mut trained, &part)?;
    let (mut random, _) = learner::build_encoder(reg, &cfg, test.shape)?;
    let (mut g, _) = report::features(&mut random, &part)?;
    eval::normalize_rows(&mut f, d);
    eval::normalize_rows(&mut g, d);
    let t0 = std::time::Instant::now();
    let a = tsne(&f, d, args.perplexity, args.epochs).context("mapping the trained features")?;
    let b =
        tsne(&g, d, args.perplexity, args.epochs).context("mapping the random-init features")?;
    let secs = t0.elapsed().as_secs_f64();
    let knn = part.is_labeled().then(|| (map_knn(&a, &part.labels), map_knn(&b, &part.labels)));
    let title = |who: &str, k: Option<f64>| {
        format!(
            "{who}: {n} images of {}{}",
            test.name,
            k.map_or(String::new(), |k| format!(", 10-NN in the map {:.1}%", k * 100.0))
        )
    };
    draw(
        &args.out,
        [(&title("trained", knn.map(|k| k.0)), &a), (&title("random init", knn.map(|k| k.1)), &b)],
        &part.labels,
        &part.classes,
    )?;
    let summary = Summary {
        split: test.name.clone(),
        indices,
        labels: part.labels.clone(),
        trained: a,
        random_init: b,
        map_knn: knn,
        tsne_seconds: secs,
        png: SIZE,
    };
    let json = json_path(&args.out);
    std::fs::write(&json, serde_json::to_string(&summary)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsne_keeps_separated_clusters_apart_and_is_deterministic() {
        // three tight clusters in 8-d: the map must keep them apart (10-NN in the map all right)
        let mut x = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let c = i % 3;
            labels.push(c as i64);
            x.extend(
                (0..8).map(
                    |j| if j == c { 5.0 } else { 0.0 } + ((i * 7 + j * 13) % 10) as f32 * 0.01,
                ),
            );
        }
        let a = tsne(&x, 8, 10.0, 300).unwrap();
        assert_eq!(a.len(), 60);
        assert_eq!(map_knn(&a, &labels), 1.0);
        assert_eq!(a, tsne(&x, 8, 10.0, 300).unwrap(), "the same points give the same map");
        let mixed: Vec<i64> = (0..60).map(|i| (i / 20) as i64).collect();
        assert!(map_knn(&a, &mixed) < 0.6, "labels unrelated to the clusters are not separated");
    }
}
