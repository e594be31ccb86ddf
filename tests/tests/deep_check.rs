//! `latent check-plugin FILE --deep` passes on every built-in and example plugin and fails,
//! naming the parameter, on a test plugin whose gradient is deliberately wrong.

use latent_tests::{latent, plugin_dir, text};

fn lib(stem: &str) -> String {
    let p = plugin_dir().join(format!(
        "{}{stem}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ));
    assert!(p.exists(), "{} not built", p.display());
    p.display().to_string()
}

#[test]
fn every_built_in_and_example_plugin_passes() {
    for stem in [
        "latent_plugin_simclr",
        "latent_plugin_byol",
        "latent_plugin_triplet",
        "latent_plugin_resnet",
        "latent_plugin_mlp",
        "latent_plugin_simsiam",
        "latent_plugin_vicreg",
        "latent_plugin_moco",
        "latent_plugin_barlow_twins",
        "latent_plugin_dino",
        "latent_example_spectral_contrastive",
        "latent_example_tiny_cnn",
    ] {
        let o = latent(&["check-plugin", &lib(stem), "--deep"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stem}:\n{}", text(&o));
        for check in ["gradients", "determinism", "finite"] {
            assert!(
                out.lines().any(|l| l.trim_start().starts_with(check) && l.contains(" ok ")),
                "{stem}: no passing {check} line:\n{out}"
            );
        }
        assert!(!out.contains("FAIL"), "{stem}:\n{out}");
    }
}

#[test]
fn a_wrong_gradient_fails_naming_the_parameter() {
    let o = latent(&["check-plugin", &lib("latent_test_faulty"), "--deep"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let block: Vec<&str> =
        out.lines().skip_while(|l| !l.contains("wrong-gradient (objective)")).take(4).collect();
    assert!(block.len() == 4, "{out}");
    assert!(
        block[1].contains("gradients")
            && block[1].contains("FAIL")
            && block[1].contains("scale.weight (5.0e-1)"),
        "{out}"
    );
    assert!(block[2].contains("determinism") && block[2].contains(" ok "), "{out}");
    // the correct plugins of the same library pass
    let faulty: Vec<&str> =
        out.lines().skip_while(|l| !l.contains("  faulty (objective)")).take(2).collect();
    assert!(faulty[1].contains(" ok "), "{out}");
}
