//! Reference values (lightly 1.6.0, see fixtures/gen.py) and finite differences.

use super::*;
use latent_sdk::abi::ObjectiveBox;
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");

#[test]
fn loss_and_gradients_match_lightly() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (n, d, eps) = (
        fx["n"].as_u64().unwrap() as usize,
        fx["d"].as_u64().unwrap() as usize,
        fx["eps"].as_f64().unwrap(),
    );
    for (i, c) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let g = Graph::new(true);
        let za = g.input(&tensor(&c["z_a"], n, d)).unwrap();
        let zb = g.input(&tensor(&c["z_b"], n, d)).unwrap();
        let (l, metrics) =
            loss::barlow_twins(&za, &zb, c["lambda"].as_f64().unwrap(), eps).unwrap();
        assert_scalar(&format!("loss of case {i}"), l.item(), c["loss"].as_f64().unwrap(), 1e-5);
        assert_eq!(
            metrics.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["on_diag", "off_diag", "mean_diag"]
        );
        let mut gr = g.backward(&l).unwrap();
        assert_close(
            &format!("dz_a of case {i}"),
            &gr.tensor(&za, &[n, d]).data,
            &floats(&c["dz_a"]),
            1e-5,
        );
        assert_close(
            &format!("dz_b of case {i}"),
            &gr.tensor(&zb, &[n, d]).data,
            &floats(&c["dz_b"]),
            1e-5,
        );
    }
}

#[test]
fn identical_views_leave_only_the_redundancy_term() {
    let g = Graph::new(true);
    let z = g.input(&random(&[9, 5], 1)).unwrap();
    let (_, m) = loss::barlow_twins(&z, &z, 5e-3, 0.0).unwrap();
    assert!(
        m[0].1 < 1e-10 && (m[2].1 - 1.0).abs() < 1e-6,
        "on_diag {} mean_diag {}",
        m[0].1,
        m[2].1
    );
    assert!(m[1].1 > 0.0, "random columns still correlate a little");
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<BarlowTwins>(json, 3)
}

#[test]
fn gradients_match_finite_differences_with_and_without_the_projector() {
    // (views from seeds 11 and 12: with seeds 1 and 2 a hidden unit of view 0 sits within 1e-3
    // of its ReLU kink, where central differences straddle two slopes, whatever the step)
    let v = || vec![random(&[6, 5], 11), random(&[6, 5], 12)];
    // the loss alone, with a λ large enough for the off-diagonal term to matter. In f32,
    // 1 − C_ii cancels, so the step is large (1e-2) and the bound loose
    let mut obj = new_box(r#"{"head": false, "input_dim": 5, "lambda": 0.3}"#);
    latent_sdk::check::assert_objective_gradients(&mut obj, v(), vec![], vec![], 1e-2, 2e-2);
    let mut obj = new_box(r#"{"input_dim": 5, "hidden_dim": 6, "output_dim": 4, "lambda": 0.3}"#);
    let names: Vec<String> = obj.params().unwrap().iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names.first().map(String::as_str), Some("projector.0.weight"));
    assert_eq!(
        names.last().map(String::as_str),
        Some("projector.6.weight"),
        "lightly's three-layer head: {names:?}"
    );
    latent_sdk::check::assert_objective_gradients(&mut obj, v(), vec![], vec![], 1e-3, 2e-2);
}

#[test]
fn lambda_inv_dim_is_one_over_the_projection_size() {
    let p = BarlowTwins::new(
        Config { output_dim: 64, lambda_inv_dim: true, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    assert_eq!(p.lambda(), 1.0 / 64.0);
    let p = BarlowTwins::new(
        Config { input_dim: 8, head: false, lambda_inv_dim: true, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    assert_eq!(p.lambda(), 1.0 / 8.0, "without the projector D is the encoder's");
}

#[test]
fn bad_config_is_refused_by_name() {
    latent_sdk::testing::assert_refused::<BarlowTwins>(&[
        (r#"{"lambda": -1}"#, "lambda"),
        (r#"{"eps": -1e-5}"#, "eps"),
        (r#"{"input_dim": 0}"#, "input_dim"),
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"lamda": 0.1}"#, "unknown field `lamda`"),
    ]);
}
