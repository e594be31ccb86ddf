//! Property-based fuzzing of the config parser. Whatever the TOML text or the
//! `--set` strings, `Config::from_table` / `Config::load` answer with a config or an error,
//! never a panic or a hang; and a config they accept can be written back (the run's
//! `config.toml`) and read again to the same hash, so `--resume` can always reload it.
//!
//! Inputs mix structure (the real key paths, values of every TOML type, edge numbers such as
//! `nan`, `-1`, `1e400`, `18446744073709551616`) with arbitrary text. The default case count
//! keeps the suite fast; a long session: `PROPTEST_CASES=20000 cargo test -p latent-host
//! --test fuzz_config --release` (figures in docs/RELIABILITY.md). `cargo fuzz` needs a nightly
//! toolchain, which this project does not use.

use latent_host::config::{apply_override, Config};
use latent_host::train::run_dir::config_hash;
use proptest::prelude::*;

/// Every key path the config knows, and a few it does not.
const PATHS: &[&str] = &[
    "device",
    "data.source",
    "data.threads",
    "data.prefetch",
    "data.skip_bad_images",
    "data.max_train_images",
    "data.max_test_images",
    "encoder",
    "encoder.plugin",
    "encoder.config",
    "encoder.config.preset",
    "encoder.config.dim",
    "objective",
    "objective.plugin",
    "objective.config",
    "objective.config.temperature",
    "augment",
    "train",
    "train.epochs",
    "train.batch_size",
    "train.max_steps",
    "train.seed",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.classes_per_batch",
    "train.call_timeout_s",
    "optim",
    "optim.name",
    "optim.lr",
    "optim.scale_lr_by_batch",
    "optim.momentum",
    "optim.nesterov",
    "optim.weight_decay",
    "optim.betas",
    "optim.eps",
    "optim.trust_coefficient",
    "optim.warmup_steps",
    "optim.warmup_epochs",
    "optim.schedule",
    "optim.min_lr",
    "eval",
    "eval.every_epochs",
    "eval.knn",
    "eval.linear_probe",
    "eval.probe_steps",
    "train.epochz",
    "data.source.deeper",
    "x",
];

const SECTIONS: &[&str] = &[
    "data",
    "encoder",
    "encoder.config",
    "objective",
    "objective.config",
    "train",
    "optim",
    "eval",
    "unknown",
    "train.deep",
];

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(PATHS).prop_map(String::from),
        1 => "[a-z_]{1,6}(\\.[a-z_]{1,6}){0,3}",
        1 => "\\PC{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop::sample::select(
            &[
                "0",
                "1",
                "2",
                "-1",
                "256",
                "600",
                "18446744073709551615",
                "18446744073709551616",
                "9223372036854775808"
            ][..]
        )
        .prop_map(String::from),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        prop::sample::select(
            &[
                "nan", "-nan", "inf", "-inf", "+inf", "0.0", "-0.0", "1e400", "1e-400", "0.5",
                "1.0", "1e308"
            ][..]
        )
        .prop_map(String::from),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(
            &[
                "cpu",
                "cuda:0",
                "sgd",
                "adamw",
                "lars",
                "cosine",
                "constant",
                "simclr",
                "byol",
                "resnet",
                "pipeline",
                "embedded:mnist-5k",
                "idx:/nonexistent",
                "resnet-mini",
                ""
            ][..]
        )
        .prop_map(|s| format!("{s:?}")),
        "\\PC{0,10}".prop_map(|s| format!("{s:?}")),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("'literal'".to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..3).prop_map(|v| format!(
                "{{ {} }}",
                v.into_iter().map(|(k, x)| format!("{k} = {x}")).collect::<Vec<_>>().join(", ")
            )),
        ]
    })
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (path(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(SECTIONS).prop_map(|s| format!("[{s}]")),
        1 => Just("[[augment]]".to_string()),
        1 => Just("plugin = \"pipeline\"".to_string()),
        1 => "\\PC{0,30}",
    ]
}

fn toml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(line(), 0..12).prop_map(|l| l.join("\n")),
        1 => "\\PC{0,200}",
        1 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn set_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (path(), value()).prop_map(|(k, v)| format!("{k}={v}")),
        2 => (path(), "\\PC{0,12}").prop_map(|(k, v)| format!("{k}={v}")),
        1 => "\\PC{0,30}",
        1 => prop::sample::select(&["=", "==", ".=1", "a..b=1", "train.epochs", " = ", "train.epochs==2", "train=1", "train.epochs.x=1"][..]).prop_map(String::from),
    ]
}

/// An accepted config must survive the trip through the run's `config.toml`.
fn check_accepted(cfg: &Config) {
    let text =
        cfg.to_toml().expect("an accepted config serialises to TOML (the run's config.toml)");
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the written config.toml does not parse: {e}\n{text}"));
    let back = Config::from_table(table)
        .unwrap_or_else(|e| panic!("the written config.toml is refused: {e:#}\n{text}"));
    assert_eq!(
        config_hash(cfg).unwrap(),
        config_hash(&back).unwrap(),
        "the config hash changes through config.toml:\n{text}"
    );
}

proptest! {
    #[test]
    fn arbitrary_toml_text_is_a_config_or_an_error(text in toml_text()) {
        if let Ok(table) = text.parse::<toml::Table>() {
            if let Ok(cfg) = Config::from_table(table) {
                check_accepted(&cfg);
            }
        }
    }

    #[test]
    fn arbitrary_set_strings_are_a_config_or_an_error(sets in prop::collection::vec(set_string(), 0..6)) {
        if let Ok(cfg) = Config::load(None, &sets) {
            check_accepted(&cfg);
        }
        // apply_override alone, on a table that already holds values of other types
        let mut t: toml::Table = "train = 3\n[data]\nsource = \"x\"\n[encoder.config]\nx = [1]".parse().unwrap();
        for s in &sets {
            let _ = apply_override(&mut t, s);
        }
    }

    #[test]
    fn config_files_with_overrides_are_a_config_or_an_error(text in toml_text(), sets in prop::collection::vec(set_string(), 0..3)) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, &text).unwrap();
        if let Ok(cfg) = Config::load(Some(&f), &sets) {
            check_accepted(&cfg);
        }
    }
}

#[test]
fn known_edge_cases_are_errors_not_panics() {
    for sets in [
        vec!["train.batch_size=18446744073709551616"],
        vec!["train.epochs=-1"],
        vec!["optim.lr=nan"],
        vec!["optim.lr=inf"],
        vec!["eval.knn=[[0, 0.1]]"],
        vec!["eval.knn=[[5, nan]]"],
        vec!["objective.config.temperature=nan"],
        vec!["augment=[]"],
        vec!["train=1", "train.epochs=2"],
        vec!["encoder=\"resnet\""],
        vec!["=1"],
    ] {
        let sets: Vec<String> = sets.into_iter().map(String::from).collect();
        if let Ok(cfg) = Config::load(None, &sets) {
            check_accepted(&cfg);
        }
    }
}

#[test]
fn non_finite_numbers_in_plugin_configs_are_refused_naming_the_key() {
    // found by the fuzzer: JSON has no nan, so the value became null and writing config.toml failed
    let e =
        Config::from_table("[objective.config]\ntemperature = nan".parse().unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("objective.config.temperature"), "{e:#}");
    let e = Config::from_table(
        "[[augment]]\nplugin = \"pipeline\"\nconfig = { p = [1, inf] }".parse().unwrap(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("augment[0].config.p[1]"), "{e:#}");
    // on the command line, nan is a word (e.g. the faulty test plugin's fault=nan)
    let c = Config::load(None, &["objective.config.fault=nan".into()]).unwrap();
    assert_eq!(c.objective.config["fault"], "nan");
}

#[test]
fn a_section_given_as_an_array_is_refused() {
    // found by the fuzzer: serde read it as the section, config.toml wrote it back as a table that
    // merged with the defaults differently, so --resume saw another config hash
    let e = Config::load(None, &["objective=[\"simclr\"]".into()]).unwrap_err();
    assert!(format!("{e:#}").contains("key `objective`: expected a table"), "{e:#}");
}
