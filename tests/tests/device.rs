//! The device a run trains on (issue #21), as far as a machine without a GPU can check it:
//! a missing GPU is a clear error before anything is written; `check-device`, the CUDA–CPU
//! comparison, runs its CPU side; and tests/gpu/run, the script a GPU machine runs, passes its
//! CPU dry run. The CUDA kernels themselves are checked only by tests/gpu/run on a GPU.

use latent_abi::Context;
use latent_host::plugins::Registry;
use latent_sdk::kit::Tensor;
use latent_tests::{build_dir, latent, plugin_dir, text};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn small_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small-mnist.toml").display().to_string()
}

#[test]
fn a_missing_gpu_is_a_clear_error_and_writes_nothing() {
    if latent_cuda::driver_present() {
        return; // a GPU machine: tests/gpu/run covers the device
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = latent(&["train", "--set", "device=cuda:0", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config key `device` = \"cuda:0\"") && err.contains("libcuda.so.1"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "the run directory was created before the device was refused");
    // a device that is not a device is refused by the config, naming the key
    let o = latent(&["train", "--set", "device=\"gpu\"", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cuda:N"), "{}", text(&o));
}

#[test]
fn check_device_compares_the_cpu_with_itself_exactly() {
    let o = latent(&["check-device", &small_config(), "--device", "cpu", "--batch", "8", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let rows = v["rows"].as_array().unwrap();
    let what: Vec<&str> = rows.iter().map(|r| r["what"].as_str().unwrap()).collect();
    assert_eq!(
        what,
        [
            "features",
            "loss",
            "encoder gradients (the worst tensor)",
            "parameters and running statistics",
            "two updates from the same gradients (optimizer on the host)",
            "losses of two training steps",
            "what the training steps changed (optimizer on the host)"
        ]
    );
    // the same code on the same weights and batch: bitwise the same answers
    assert!(rows.iter().all(|r| r["rel_err"] == 0.0), "{v}");
    // weights perturbed at the level of rounding (what a GPU's other summation orders do):
    // every row within its tolerance, though not exact
    let perturbed = |eps: &str| {
        let args = ["check-device", &small_config(), "--device", "cpu", "--batch", "8"];
        latent(&[&args[..], &["--perturb", eps, "--json"]].concat())
    };
    let o = perturbed("3e-7");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{v}");
    let moved = |what: &str| {
        v["rows"].as_array().unwrap().iter().find(|r| r["what"] == what).unwrap()["rel_err"]
            .as_f64()
            .unwrap()
    };
    assert!(moved("features") > 0.0, "{v}");
    // and a real difference fails the check, naming the rows
    let o = perturbed("1e-2");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let failed: Vec<&str> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .map(|r| r["what"].as_str().unwrap())
        .collect();
    let out = failed.join(", ");
    assert!(failed.contains(&"features"), "{out}");
    // and a GPU that is not there is said so, not compared
    if !latent_cuda::driver_present() {
        let o = latent(&["check-device", &small_config(), "--device", "cuda:0"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("libcuda.so.1"), "{}", text(&o));
    }
}

#[test]
fn the_gpu_script_passes_its_cpu_dry_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(build_dir().join("step").exists(), "run `cargo build --workspace` first");
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(root.join("tests/gpu/run"))
        .arg("--cpu")
        .env("OUT", dir.path())
        .env_remove("LATENT_PLUGIN_PATH")
        .current_dir(root)
        .output()
        .unwrap();
    let s = text(&o);
    assert!(o.status.success() && s.contains("tests/gpu/run: PASSED"), "{s}");
    assert!(s.contains("ok: beats random init"), "{s}");
    assert_eq!(s.matches("\nagree").count(), 3, "{s}");
    assert_eq!(s.matches("last checkpoint holds run a's").count(), 2, "{s}");
}

#[test]
fn a_library_built_without_the_device_calls_loads_and_runs_on_the_cpu() {
    // tests/plugins/no-device-calls: latent's root module and an EncoderAbi, no DeviceExport,
    // as a library built before ABI 0.3.1
    let reg = Registry::discover_in(vec![plugin_dir()]).unwrap();
    let ctx = Context::default();
    let mut flat = reg.encoder("flat", &serde_json::json!({}), &ctx).unwrap();
    assert!(!flat.has_device_calls());
    assert!(flat.device_params(&[]).unwrap().is_empty());
    let x = Tensor::new(vec![2, 1, 2, 2], vec![0., 1., 2., 3., 4., 4., 4., 4.]);
    assert_eq!(flat.forward(x, false).unwrap().data, [1.5, 3.0, 4.0, 4.0]);
    // the SDK's libraries build their encoders with the device calls
    let mlp = reg.encoder("mlp", &serde_json::json!({}), &ctx).unwrap();
    assert!(mlp.has_device_calls());
    let o = latent(&[
        "check-plugin",
        build_dir().join("liblatent_test_no_device_calls.so").to_str().unwrap(),
    ]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("device calls: none"),
        "{}",
        text(&o)
    );
}
