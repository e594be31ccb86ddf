//! `latent eval` and `latent embed` on a trained run.

use latent_tests::{latent, text};
use serde_json::Value;
use std::path::Path;

fn small_run(dir: &Path) -> std::path::PathBuf {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small-mnist.toml");
    let out = dir.join("run");
    let o = latent(&[
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.epochs=1",
        "--set",
        "eval.knn=[[200, 0.1], [20, 0.07]]",
        "--set",
        "eval.linear_probe=true",
        "--set",
        "eval.probe_steps=100",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("kNN@200"), "training ends with the kNN accuracy: {stdout}");
    out
}

#[test]
fn eval_prints_the_table_with_both_baselines_and_json_and_embed_writes_npy() {
    let dir = tempfile::tempdir().unwrap();
    let run = small_run(dir.path());

    let o = latent(&["eval", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    for col in [
        "method",
        "kNN@200 (T=0.1)",
        "kNN@20 (T=0.07)",
        "linear probe",
        "simclr (resnet)",
        "random init",
        "raw pixels",
    ] {
        assert!(table.contains(col), "missing {col:?} in:\n{table}");
    }

    let o = latent(&["eval", run.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rep["train_size"], 1024);
    assert_eq!(rep["test_size"], 500);
    for r in rows {
        assert_eq!(r["knn"].as_array().unwrap().len(), 2);
        let acc = r["linear_probe"].as_f64().unwrap();
        assert!((0.1..=1.0).contains(&acc), "{r}");
    }
    // raw pixels of 28x28 digits: 784-d
    assert_eq!(rows[2]["dim"], 784);

    let npy = dir.path().join("feats.npy");
    let o = latent(&[
        "embed",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&npy).unwrap();
    let arr = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(arr.shape(), &[500, 32]);
    let feats: Vec<f32> = arr.into_vec().unwrap();
    assert!(feats.iter().all(|v| v.is_finite()) && feats.iter().any(|v| *v != 0.0));
    let bytes = std::fs::read(dir.path().join("feats.labels.npy")).unwrap();
    let labels: Vec<i64> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
    assert_eq!(labels.len(), 500);
    assert!(labels.iter().all(|l| (0..10).contains(l)));
    // the features are the checkpoint's encoder in eval mode: embedding twice gives the same bytes
    let npy2 = dir.path().join("again.npy");
    let o = latent(&[
        "embed",
        run.to_str().unwrap(),
        "--split",
        "test",
        "--out",
        npy2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&npy).unwrap(), std::fs::read(&npy2).unwrap());
    // regression: `--out RUN/config.toml` silently replaced the run's config; a failed write
    // did not name the file
    let cfg = run.join("config.toml");
    let before = std::fs::read(&cfg).unwrap();
    let o = latent(&["embed", run.to_str().unwrap(), "--out", cfg.to_str().unwrap()]);
    assert!(
        o.status.code() == Some(1)
            && String::from_utf8_lossy(&o.stderr).contains("must be a .npy file"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&cfg).unwrap(), before, "the run's config is untouched");
    if std::path::Path::new("/dev/full").exists() {
        let _ = std::fs::remove_file("/tmp/latent-full.npy");
        std::os::unix::fs::symlink("/dev/full", "/tmp/latent-full.npy").ok();
        let o = latent(&["embed", run.to_str().unwrap(), "--out", "/tmp/latent-full.npy"]);
        let _ = std::fs::remove_file("/tmp/latent-full.npy");
        assert!(
            o.status.code() == Some(1)
                && String::from_utf8_lossy(&o.stderr).contains("cannot write /tmp/latent-full.npy"),
            "{}",
            text(&o)
        );
    }
    // a file that is not a checkpoint
    let o = latent(&["eval", "/bin/ls"]);
    assert!(
        o.status.code() == Some(1)
            && String::from_utf8_lossy(&o.stderr).contains("is not a checkpoint"),
        "{}",
        text(&o)
    );
}

#[test]
fn eval_of_a_missing_run_names_the_path() {
    let o = latent(&["eval", "/nonexistent/run"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/run"), "{}", text(&o));
}
