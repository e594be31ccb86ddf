//! Reference values from a PyTorch version of the authors' loss (fixtures/gen.py) and finite
//! differences through the plugin's projector.

use super::*;
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");

#[test]
fn loss_and_gradients_match_the_pytorch_reference() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (n, d) = (fx["n"].as_u64().unwrap() as usize, fx["d"].as_u64().unwrap() as usize);
    for (i, c) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let mu = c["mu"].as_f64().unwrap() as f32;
        let g = Graph::new(true);
        let a = g.input(&tensor(&c["a"], n, d)).unwrap();
        let b = g.input(&tensor(&c["b"], n, d)).unwrap();
        let (loss, pos, neg_sq) = spectral_contrastive(&cap_norm(&a, mu), &cap_norm(&b, mu));
        assert_scalar(&format!("pos of case {i}"), pos, c["pos"].as_f64().unwrap(), 1e-5);
        assert_scalar(&format!("neg_sq of case {i}"), neg_sq, c["neg_sq"].as_f64().unwrap(), 1e-5);
        assert_scalar(&format!("loss of case {i}"), loss.item(), c["loss"].as_f64().unwrap(), 1e-5);
        let mut gr = g.backward(&loss).unwrap();
        assert_close(
            &format!("da of case {i}"),
            &gr.tensor(&a, &[n, d]).data,
            &floats(&c["da"]),
            1e-5,
        );
        assert_close(
            &format!("db of case {i}"),
            &gr.tensor(&b, &[n, d]).data,
            &floats(&c["db"]),
            1e-5,
        );
    }
}

fn new_box(json: &str) -> latent_sdk::abi::ObjectiveBox {
    latent_sdk::testing::objective::<SpectralContrastive>(json, 5)
}

#[test]
fn gradients_through_the_projector_match_finite_differences() {
    // μ = 100: no row reaches the cap, whose kink the central differences would straddle
    let mut obj = new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "mu": 100.0}"#);
    let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
    latent_sdk::check::assert_objective_gradients(&mut obj, v, vec![], vec![], 1e-3, 1e-2);
}

#[test]
fn bad_config_is_refused_by_name() {
    latent_sdk::testing::assert_refused::<SpectralContrastive>(&[
        (r#"{"mu": 0}"#, "mu must be"),
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"temperature": 0.1}"#, "unknown field `temperature`"),
    ]);
}
