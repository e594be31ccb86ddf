//! The plugin ABI and loading, through the built libraries and the `latent` binary.

use latent_host::plugins::Registry;
use latent_tests::{latent, plugin_dir, text};
use serde_json::{json, Value};

fn registry() -> Registry {
    Registry::discover_in(vec![plugin_dir()]).expect("discover plugins")
}

fn lib(name: &str) -> String {
    plugin_dir()
        .join(format!("{}{name}.{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_EXTENSION))
        .display()
        .to_string()
}

#[test]
fn plugins_json_lists_the_builtin_plugins() {
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
    for obj in ["simclr", "byol", "triplet", "moco", "simsiam", "vicreg", "barlow-twins", "dino"] {
        assert_eq!(kind_of(obj).as_deref(), Some("objective"), "{obj} missing:\n{}", text(&out));
    }
    // the plugins' own file names: built-ins are latent_plugin_*, not examples
    let file = |name: &str| {
        v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["file"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        file("barlow-twins").contains("latent_plugin_barlow_twins"),
        "{}",
        file("barlow-twins")
    );
    let moco = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "moco").unwrap();
    assert_eq!(moco["default_config"]["version"], json!("v2"), "{moco}");
    assert_eq!(kind_of("resnet").as_deref(), Some("encoder"));
    assert_eq!(kind_of("mlp").as_deref(), Some("encoder"));
    assert_eq!(kind_of("vit").as_deref(), Some("encoder"));
    assert_eq!(kind_of("pipeline").as_deref(), Some("augmentation"));
    let simclr = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "simclr").unwrap();
    assert!(simclr["file"].as_str().unwrap().contains("latent_plugin_simclr"));
    assert!(simclr["default_config"].is_object(), "default config is JSON: {simclr}");
    assert!(!simclr["description"].as_str().unwrap().is_empty());
    let byol = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "byol").unwrap();
    assert_eq!(byol["needs_target"], json!(true));
    let triplet = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "triplet").unwrap();
    assert_eq!(triplet["needs_labels"], json!(true));
}

#[test]
fn a_panicking_plugin_is_reported_and_the_host_carries_on() {
    let reg = registry();
    let ctx = Default::default();
    let mut obj = reg.objective("faulty", &json!({"fault": "panic"}), &ctx).unwrap();
    let v = latent_sdk::kit::Tensor::new(vec![2, 3], vec![0.5; 6]);
    let err =
        obj.compute(&[v.clone(), v.clone()], &[], &[], 0, 10, true).err().expect("the call fails");
    let msg = format!("{err:#}");
    assert!(msg.contains("plugin 'faulty' panicked: deliberate panic at step 0"), "{msg}");
    // the instance is poisoned, the host is alive, and a new instance works
    let again =
        format!("{:#}", obj.compute(&[v.clone(), v.clone()], &[], &[], 1, 10, true).err().unwrap());
    assert!(again.contains("unusable after an earlier panic"), "{again}");
    let mut fresh = reg.objective("faulty", &json!({"fault": "none"}), &ctx).unwrap();
    let r = fresh.compute(&[v.clone(), v], &[], &[], 0, 10, true).unwrap();
    assert_eq!(r.loss, 0.0);
}

#[test]
fn a_panicking_encoder_through_the_cli_binary_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = latent(&[
        "train",
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--set",
        "encoder.plugin=faulty-encoder",
        "--set",
        "encoder.config.fault=panic",
        "--set",
        "objective.plugin=faulty",
        "--set",
        "train.max_steps=2",
        "--set",
        "train.batch_size=8",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugin 'faulty-encoder' panicked: deliberate panic in forward call 0"),
        "{}",
        text(&out)
    );
    assert!(err.contains("step 0"), "the error names the step: {}", text(&out));
}

#[test]
fn check_plugin_accepts_a_good_library() {
    let out = latent(&["check-plugin", &lib("latent_plugin_simclr")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("simclr (objective"), "{}", text(&out));
}

#[test]
fn check_plugin_refuses_an_incompatible_type_layout() {
    let f = lib("latent_test_wrong_layout");
    let out = latent(&["check-plugin", &f]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&f) && s.contains("incompatible type layout"), "{s}");
}

#[test]
fn check_plugin_refuses_an_incompatible_abi_version() {
    let f = lib("latent_test_wrong_version");
    let out = latent(&["check-plugin", &f]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&f) && s.contains("incompatible ABI") && s.contains("9.0.0"), "{s}");
}

#[test]
fn check_plugin_refuses_a_file_that_is_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("libnotalib.so");
    std::fs::write(&f, "just text").unwrap();
    let out = latent(&["check-plugin", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(f.to_str().unwrap()) && s.contains("not a loadable library"), "{s}");
}

#[test]
fn check_plugin_refuses_a_library_without_the_root_module() {
    let f = lib("latent_test_no_root");
    let out = latent(&["check-plugin", &f]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains(&f) && s.contains("exports no abi_stable root module"), "{s}");
}

#[test]
fn a_plugin_config_with_an_unknown_key_is_refused_naming_key_and_plugin() {
    let reg = registry();
    let err = reg
        .objective("simclr", &json!({"temperature": 0.5, "temprature": 0.1}), &Default::default())
        .err()
        .unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("plugin 'simclr'") && msg.contains("unknown field `temprature`"), "{msg}");
    let err =
        reg.encoder("resnet", &json!({"widths_typo": [1]}), &Default::default()).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("plugin 'resnet'") && msg.contains("widths_typo"), "{msg}");
}

#[test]
fn of_two_plugins_with_one_name_the_first_on_the_path_is_used_and_both_are_listed() {
    // regression: one duplicate name blocked every command, `latent plugins` included
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(format!(
        "{}faulty_copy.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    std::fs::copy(lib("latent_test_faulty"), &copy).unwrap();
    let reg = Registry::discover_in(vec![plugin_dir(), dir.path().to_path_buf()]).unwrap();
    assert!(reg.entries["faulty"].file.to_string_lossy().contains("latent_test_faulty"));
    assert!(
        reg.shadowed.iter().any(|(n, used, hidden)| n == "faulty"
            && used.to_string_lossy().contains("latent_test_faulty")
            && hidden == &copy),
        "{:?}",
        reg.shadowed
    );
    let out = latent(&["--plugin-dir", dir.path().to_str().unwrap(), "plugins"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("shadowed: faulty in") && s.contains("latent_test_faulty"), "{s}");
    assert!(
        s.lines().any(|l| l.starts_with("faulty ") && l.contains("faulty_copy")),
        "--plugin-dir comes first, so the copy wins:\n{s}"
    );
}

#[test]
fn plugin_dir_flag_and_environment_extend_the_search_path() {
    let out = latent(&["--plugin-dir", "/nonexistent/a", "plugins", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sp: Vec<&str> =
        v["search_path"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(sp[0], "/nonexistent/a");
    assert!(sp.iter().any(|p| p.ends_with("debug") || p.ends_with("release")), "{sp:?}");
}

#[test]
fn every_builtin_plugin_has_one_name_for_its_folder_crate_library_and_plugin() {
    let out = latent(&["plugins", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for p in v["plugins"].as_array().unwrap() {
        let (name, kind, file) =
            (p["name"].as_str().unwrap(), p["kind"].as_str().unwrap(), p["file"].as_str().unwrap());
        let stem = std::path::Path::new(file).file_stem().unwrap().to_str().unwrap();
        if !stem.contains("latent_plugin_") {
            continue; // examples, test libraries
        }
        let lib =
            format!("{}latent_plugin_{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"));
        assert_eq!(stem, lib, "plugin '{name}' comes from {file}");
        let manifest = root.join(format!("plugins/{kind}s/{name}/Cargo.toml"));
        let toml = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("plugin '{name}': no crate at {}: {e}", manifest.display()));
        assert!(
            toml.contains(&format!("name = \"latent-plugin-{name}\"")),
            "{}",
            manifest.display()
        );
        checked += 1;
    }
    // and every crate under plugins/ exports its plugin
    let crates = ["objectives", "encoders", "augmentations"]
        .iter()
        .map(|k| std::fs::read_dir(root.join("plugins").join(k)).unwrap().count())
        .sum::<usize>();
    assert_eq!(
        checked,
        crates,
        "{checked} built-in plugins found for {crates} crates:\n{}",
        text(&out)
    );
}

#[test]
fn the_abi_crate_compiles_no_numeric_code() {
    // what a program that only speaks the ABI builds: abi_stable and its own dependencies
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "latent-abi", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && tree.contains("abi_stable"), "{tree}{}", text(&out));
    for numeric in ["dfdx", "gemm", "rayon", "rand", "nalgebra", "matrixmultiply", "latent-sdk"] {
        assert!(
            !tree.lines().any(|l| l.split_whitespace().next() == Some(numeric)),
            "latent-abi depends on {numeric}:\n{tree}"
        );
    }
}
