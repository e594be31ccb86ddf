//! What a researcher looks at. Each picture is a valid PNG of the size its summary
//! says, and what it draws comes from the run: the curves of eval.png are the run's records,
//! the views are the loader's, the neighbours are the nearest in the embedded features, the
//! runs table reads the run's files.

use latent_host::config::Config;
use latent_host::data::loader;
use latent_host::inspect::grid::{shade, Tile};
use latent_host::inspect::plot::png_size;
use latent_host::plugins::Registry;
use latent_tests::{latent, plugin_dir, text};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small-mnist.toml").display().to_string()
}

fn run_latent(args: &[&str]) -> String {
    let o = latent(args);
    assert!(o.status.success(), "latent {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A short run with an evaluation (kNN and probe) after every other epoch.
fn short_run(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let o = out.display().to_string();
    run_latent(&[
        "train",
        &config(),
        "--out",
        &o,
        "--set",
        "eval.every_epochs=2",
        "--set",
        "eval.linear_probe=true",
        "--set",
        "eval.probe_steps=50",
    ]);
    out
}

fn json(path: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn npy(path: &Path) -> (Vec<f32>, usize) {
    let bytes = std::fs::read(path).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    let d = arr.shape()[1] as usize;
    (arr.into_vec().unwrap(), d)
}

#[test]
fn plots_views_neighbours_and_runs_draw_what_the_run_holds() {
    let dir = tempfile::tempdir().unwrap();
    let run = short_run(dir.path());

    // --- loss.png and eval.png: two panels each, the curves are the run's records
    use latent_host::inspect::plot::{PANEL_HEIGHT, WIDTH};
    assert_eq!(png_size(&run.join("loss.png")).unwrap(), (WIDTH, 2 * PANEL_HEIGHT));
    assert_eq!(png_size(&run.join("eval.png")).unwrap(), (WIDTH, 2 * PANEL_HEIGHT));
    let records = latent_host::train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let report = json(&run.join("eval.json"));
    let fig = latent_host::inspect::plots::eval_figure(&records, Some(&report));
    let evals: Vec<&Value> =
        records.iter().filter(|r| r["kind"] == "eval" && r.get("knn_20").is_some()).collect();
    assert!(evals.len() >= 2, "kNN after epoch 2 and at the end: {evals:?}");
    let knn = &fig.panels[0].series[0];
    assert_eq!(knn.name, "kNN@20");
    let want: Vec<(f64, f64)> = evals
        .iter()
        .map(|r| (r["step"].as_f64().unwrap(), r["knn_20"].as_f64().unwrap()))
        .collect();
    assert_eq!(knn.points, want);
    assert_eq!(
        knn.points.last().unwrap().1,
        report["rows"][0]["knn"][0][2].as_f64().unwrap(),
        "the last evaluation is the final report's"
    );
    let probe =
        fig.panels[0].series.iter().find(|s| s.name == "linear probe").expect("a probe curve");
    assert_eq!(probe.points.len(), evals.len());
    let raw = fig.panels[0]
        .series
        .iter()
        .find(|s| s.name == "raw pixels: kNN@20")
        .expect("the raw-pixel level");
    assert_eq!(raw.points[0].1, report["rows"][2]["knn"][0][2].as_f64().unwrap());
    assert_eq!(fig.steps_per_epoch, Some(8.0), "1,024 images in batches of 128");

    // --- latent views: the tiles are the loader's views of the first batch's images
    let views_png = dir.path().join("views.png");
    let out = run_latent(&[
        "views",
        &config(),
        "--out",
        views_png.to_str().unwrap(),
        "--images",
        "3",
        "--epochs",
        "2",
        "--scale",
        "2",
    ]);
    assert!(out.contains("3 images of mnist-5k/train"), "{out}");
    let summary = json(&dir.path().join("views.json"));
    let size = png_size(&views_png).unwrap();
    assert_eq!(Value::from(vec![size.0, size.1]), summary["png"]);
    let reg = Registry::discover(&[plugin_dir()]).unwrap();
    let cfg = Config::load(Some(Path::new(&config())), &[]).unwrap();
    let train = latent_host::data::open_data(&cfg).unwrap().train;
    let views = latent_host::data::build_views(&reg, &cfg).unwrap();
    let base = latent_host::data::loader_config(&cfg, &train, false).unwrap();
    let first: Vec<usize> = loader::epoch_batches(&train, &base).unwrap()[0][..3].to_vec();
    let shown: Vec<usize> = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shown, first, "the rows are the first images of the first batch");
    let img = image::open(&views_png).unwrap().to_luma8();
    let tiles = &summary["tiles"];
    for epoch in 0..2u64 {
        let batch = loader::build_batch(
            &train,
            &views,
            &loader::LoaderConfig { epoch, ..base.clone() },
            first.clone(),
        )
        .unwrap();
        for (v, t) in batch.views.iter().enumerate() {
            for (r, &i) in first.iter().enumerate() {
                let seed = summary["images"][r]["seeds"][epoch as usize * 2 + v].clone();
                assert_eq!(
                    seed,
                    serde_json::json!([epoch, v, loader::sample_seed(cfg.train.seed, epoch, i, v)])
                );
                let tile = Tile {
                    shape: [1, 28, 28],
                    pixels: t.data[r * 784..(r + 1) * 784].to_vec(),
                    caption: String::new(),
                    frame: None,
                };
                let at = &tiles[r][1 + epoch as usize * 2 + v];
                let (x, y) = (at[0].as_u64().unwrap() as u32, at[1].as_u64().unwrap() as u32);
                for (py, px) in [(14, 14), (5, 20), (20, 9), (10, 10)] {
                    assert_eq!(
                        img.get_pixel(x + px as u32 * 2, y + py as u32 * 2).0[0],
                        shade(&tile, 0, py, px),
                        "row {r}, epoch {epoch}, view {v}, pixel ({py}, {px})"
                    );
                }
            }
        }
    }

    // --- latent neighbours: the nearest training images by cosine of the trained features
    let nb_png = dir.path().join("nb.png");
    let out = run_latent(&[
        "neighbours",
        run.to_str().unwrap(),
        "--out",
        nb_png.to_str().unwrap(),
        "--queries",
        "4",
        "--k",
        "5",
    ]);
    assert!(out.contains("4 queries from mnist-5k/test"), "{out}");
    let nb = json(&dir.path().join("nb.json"));
    let size = png_size(&nb_png).unwrap();
    assert_eq!(Value::from(vec![size.0, size.1]), nb["png"]);
    for split in ["train", "test"] {
        let f = dir.path().join(format!("{split}.npy"));
        run_latent(&[
            "embed",
            run.to_str().unwrap(),
            "--split",
            split,
            "--out",
            f.to_str().unwrap(),
        ]);
    }
    let (mut bank, d) = npy(&dir.path().join("train.npy"));
    let (mut te, _) = npy(&dir.path().join("test.npy"));
    latent_host::eval::normalize_rows(&mut bank, d);
    latent_host::eval::normalize_rows(&mut te, d);
    let queries = nb["queries"].as_array().unwrap();
    let labels: Vec<i64> = queries.iter().map(|q| q["label"].as_i64().unwrap()).collect();
    assert_eq!(labels, [0, 1, 2, 3], "one query per class first");
    let (mut right, mut all) = (0, 0);
    for q in queries {
        let qi = q["index"].as_u64().unwrap() as usize;
        let want =
            latent_host::inspect::neighbours::nearest(&bank, d, &te[qi * d..(qi + 1) * d], 5);
        let got: Vec<usize> = q["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want.iter().map(|p| p.0).collect::<Vec<_>>(), "query {qi}");
        for n in q["neighbours"].as_array().unwrap() {
            all += 1;
            right += usize::from(n["label"] == q["label"]);
        }
    }
    assert!((nb["precision"].as_f64().unwrap() - right as f64 / all as f64).abs() < 1e-12);

    // --- latent map: t-SNE of the trained features of the test images, beside random init
    let map_png = dir.path().join("map.png");
    let out = run_latent(&[
        "map",
        run.to_str().unwrap(),
        "--out",
        map_png.to_str().unwrap(),
        "--max-points",
        "300",
        "--epochs",
        "300",
    ]);
    assert!(out.contains("300 images of mnist-5k/test"), "{out}");
    assert_eq!(png_size(&map_png).unwrap(), latent_host::inspect::map::SIZE);
    let m = json(&dir.path().join("map.json"));
    let idx: Vec<usize> =
        m["indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(idx.len(), 300);
    let mut rows = Vec::new();
    idx.iter().for_each(|&i| rows.extend_from_slice(&te[i * d..(i + 1) * d]));
    let want = latent_host::inspect::map::tsne(&rows, d, 30.0, 300).unwrap();
    let got: Vec<(f32, f32)> = serde_json::from_value(m["trained"].clone()).unwrap();
    assert_eq!(got, want, "the map is t-SNE of the trained features of those images");
    let labels: Vec<i64> = serde_json::from_value(m["labels"].clone()).unwrap();
    let k = latent_host::inspect::map::map_knn(&got, &labels);
    assert_eq!(m["map_knn"][0].as_f64().unwrap(), k);
    assert!(
        k > m["map_knn"][1].as_f64().unwrap(),
        "the trained map separates classes better than random init: {}",
        m["map_knn"]
    );

    // --- latent runs: one finished run, one stopped by --stop-after
    let stopped = dir.path().join("stopped");
    run_latent(&["train", &config(), "--out", stopped.to_str().unwrap(), "--stop-after", "3"]);
    let rows: Value =
        serde_json::from_str(&run_latent(&["runs", dir.path().to_str().unwrap(), "--json"]))
            .unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let by = |name: &str| {
        rows.iter()
            .find(|r| r["dir"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} in {rows:?}"))
    };
    let done = by("run");
    assert_eq!(done["status"], "finished");
    assert_eq!(done["steps"], 32);
    assert_eq!(done["knn"][1], report["rows"][0]["knn"][0][2]);
    assert_eq!(done["method"], "simclr");
    assert_eq!(by("stopped")["status"], "stopped");
    assert_eq!(by("stopped")["steps"], 3);
    let table = run_latent(&["runs", dir.path().to_str().unwrap()]);
    assert!(
        table.lines().count() == 3 && table.contains("finished") && table.contains("stopped"),
        "{table}"
    );
}

#[test]
fn picture_commands_refuse_bad_arguments_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let o = latent(&["views", "--out", dir.path().join("v.jpg").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("must be a .png file"), "{}", text(&o));
    let o =
        latent(&["views", "--images", "0", "--out", dir.path().join("v.png").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("--images must be 1 to 64"), "{}", text(&o));
    let o = latent(&[
        "neighbours",
        dir.path().to_str().unwrap(),
        "--out",
        dir.path().join("n.png").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && text(&o).contains("checkpoint"), "{}", text(&o));
    let o = latent(&["runs", dir.path().join("nope").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("is not a directory"), "{}", text(&o));
}
