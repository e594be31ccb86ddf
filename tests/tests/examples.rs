//! The example plugins under examples/ load through the ABI, compute what their papers
//! say, and train through `latent train`.
//!
//! Needs `cargo build --workspace` first (the examples are cdylibs beside the binary).

use latent_abi::Context;
use latent_host::plugins::{ParamAccess, Registry};
use latent_sdk::kit::Tensor;
use latent_tests::{latent, plugin_dir, text};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn registry() -> Registry {
    Registry::discover_in(vec![plugin_dir()]).expect("discover plugins")
}

/// Fixed, deterministic inputs `[n, d]` (no random generator: the test must not depend on one).
fn fixed(n: usize, d: usize, phase: f64) -> Tensor {
    Tensor::new(
        vec![n, d],
        (0..n * d)
            .map(|k| ((k as f64 * 0.731 + phase).sin() + 0.3 * (k as f64 * 1.37).cos()) as f32)
            .collect(),
    )
}

#[test]
fn the_examples_are_listed_with_their_kinds() {
    let out = latent(&["plugins", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let kind_of = |name: &str| {
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["kind"].as_str().unwrap().to_string())
    };
    assert_eq!(kind_of("spectral-contrastive").as_deref(), Some("objective"), "{}", text(&out));
    assert_eq!(kind_of("tiny-cnn").as_deref(), Some("encoder"));
    assert_eq!(kind_of("cutout").as_deref(), Some("augmentation"));
}

fn eval_json(run: &Path) -> Value {
    let text = std::fs::read_to_string(run.join("eval.json"))
        .unwrap_or_else(|e| panic!("{}/eval.json: {e}", run.display()));
    serde_json::from_str(&text).expect("eval.json is JSON")
}

/// (trained, random init) kNN accuracy of the first kNN setting.
fn knn_pair(ev: &Value) -> (f64, f64) {
    let acc = |row: usize| ev["rows"][row]["knn"][0][2].as_f64().expect("knn accuracy");
    assert_eq!(ev["rows"][1]["method"], "random init", "{ev}");
    (acc(0), acc(1))
}

/// A short run: settings small enough for seconds; what matters is that it loads and trains.
fn short_run(extra: &[&str]) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = vec!["train", "--out", run.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--set",
        "train.max_steps=4",
        "--set",
        "train.batch_size=16",
        "--set",
        "eval.linear_probe=false",
        "--set",
        "eval.knn=[[20, 0.07]]",
        "--set",
        "eval.every_epochs=0",
    ]);
    let out = latent(&args);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps = metrics.lines().filter(|l| l.contains(r#""kind":"step""#)).count();
    assert_eq!(steps, 4, "four steps logged:\n{metrics}");
    (run, dir)
}

#[test]
fn tiny_cnn_encoder_loads_and_trains() {
    let reg = registry();
    let mut enc =
        reg.encoder("tiny-cnn", &json!({"channels": [4, 8]}), &Context::default()).unwrap();
    assert_eq!(enc.out_dim([1, 28, 28]).unwrap(), 8);
    let y =
        enc.forward(Tensor::new(vec![3, 1, 28, 28], fixed(3 * 28, 28, 0.0).data), true).unwrap();
    assert_eq!(y.shape, vec![3, 8]);
    enc.backward(Tensor::new(vec![3, 8], vec![0.1; 24])).unwrap();
    let g = enc.take_grads().unwrap();
    assert!(g[0].data.iter().any(|&v| v != 0.0), "the first conv gets a gradient");
    let e = reg.encoder("tiny-cnn", &json!({"channels": []}), &Context::default()).err().unwrap();
    assert!(format!("{e:#}").contains("at least one stage"), "{e:#}");
    let (run, _dir) = short_run(&[
        "--set",
        "encoder.plugin=tiny-cnn",
        "--set",
        "encoder.config={channels = [8, 16]}",
        "--set",
        "objective.config.input_dim=16",
    ]);
    let (trained, random) = knn_pair(&eval_json(&run));
    assert!(trained > 0.0 && random > 0.0);
}

#[test]
fn cutout_augmentation_loads_is_pure_and_trains() {
    let reg = registry();
    let aug = reg.augmentation("cutout", &json!({"holes": 2}), &Context::default()).unwrap();
    let img = Tensor::new(vec![2, 1, 8, 8], vec![0.5; 128]);
    let a = aug.apply(img.clone(), &[1, 2]).unwrap();
    assert_eq!(a, aug.apply(img.clone(), &[1, 2]).unwrap(), "a pure function of (image, seed)");
    assert_ne!(&a.data[..64], &a.data[64..], "different seeds erase different rectangles");
    assert!(a.data.iter().all(|&v| v == 0.5 || v == 0.0) && a.data.contains(&0.0));
    let e =
        reg.augmentation("cutout", &json!({"value": "noise"}), &Context::default()).err().unwrap();
    assert!(format!("{e:#}").contains("\"random\""), "{e:#}");
    short_run(&[
        "--set",
        r#"augment=[{plugin="cutout"}, {plugin="cutout", config={value="random"}}]"#,
        "--set",
        "encoder.plugin=mlp",
        "--set",
        "objective.config.input_dim=128",
    ]);
}
