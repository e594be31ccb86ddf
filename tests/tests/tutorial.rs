//! The steps of docs/TUTORIAL.md, run as written, give a plugin that `latent plugins`
//! lists and `latent train` uses.
//!
//! Slow the first time: `cargo build --release` of the generated crate compiles the SDK and its
//! dependencies (abi_stable, gemm, rayon, ...), a couple of minutes (four on a busy 2-core
//! machine). The build goes to `<target>/tutorial-test`, which persists, so later runs only
//! recompile the plugin itself (seconds). Not `<target>` itself: the outer `cargo test` holds
//! that directory's lock.

use latent_tests::{build_dir, latent, text};
use std::process::Command;

/// `latent new-plugin`, then the tutorial's `cargo build --release`, `latent plugins` and
/// `latent train`, each checked.
#[test]
fn the_tutorial_steps_give_a_plugin_that_loads_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    // step 2: latent new-plugin --kind objective my-first-loss --dir DIR
    let out = latent(&[
        "new-plugin",
        "--kind",
        "objective",
        "my-first-loss",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let krate = dir.path().join("my-first-loss");
    for f in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(krate.join(f).is_file(), "{f} written:\n{}", text(&out));
    }
    // a second time refuses to overwrite
    let again = latent(&[
        "new-plugin",
        "--kind",
        "objective",
        "my-first-loss",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{}", text(&again));

    // step 3: cd my-first-loss && cargo build --release
    let target =
        build_dir().parent().expect("the workspace target directory").join("tutorial-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let t = std::time::Instant::now();
    let build = Command::new(cargo)
        .args(["build", "--release"])
        .current_dir(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("run cargo");
    assert!(build.status.success(), "cargo build of the generated crate failed\n{}", text(&build));
    eprintln!("cargo build --release of the generated crate: {:.1} s", t.elapsed().as_secs_f64());
    let plugin_dir = target.join("release");
    let lib = plugin_dir.join(format!(
        "{}latent_plugin_my_first_loss.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    assert!(lib.is_file(), "{} built", lib.display());

    // step 4: latent --plugin-dir target/release plugins
    let pd = plugin_dir.to_str().unwrap();
    let out = latent(&["--plugin-dir", pd, "plugins"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with("my-first-loss "))
        .unwrap_or_else(|| panic!("my-first-loss not listed:\n{}", text(&out)));
    assert!(line.contains("objective") && line.contains("latent_plugin_my_first_loss"), "{line}");

    // step 5: latent --plugin-dir target/release train --set objective.plugin=my-first-loss ...
    // (the tutorial's quick run, with fewer steps)
    let run = dir.path().join("run");
    let out = latent(&[
        "--plugin-dir",
        pd,
        "train",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "objective.plugin=my-first-loss",
        "--set",
        "encoder.plugin=mlp",
        "--set",
        "train.max_steps=3",
        "--set",
        "train.batch_size=32",
        "--set",
        "eval.linear_probe=false",
        "--set",
        "eval.knn=[[20, 0.07]]",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ev = std::fs::read_to_string(run.join("eval.json")).expect("eval.json written");
    assert!(ev.contains("my-first-loss (mlp)"), "{ev}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"align\"") && metrics.contains("\"uniformity\""),
        "the plugin's metrics are logged:\n{metrics}"
    );
}
