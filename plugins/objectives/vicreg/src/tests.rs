//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use latent_sdk::abi::ObjectiveBox;
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_close_floor, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");
const HEADS: &str = include_str!("../fixtures/heads.json");

#[test]
fn loss_and_its_terms_match_lightly() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (b, d) = (fx["b"].as_u64().unwrap() as usize, fx["d"].as_u64().unwrap() as usize);
    for c in fx["cases"].as_array().unwrap() {
        let g = Graph::new(true);
        let (za, zb) = (
            g.input(&tensor(&fx["za"], b, d)).unwrap(),
            g.input(&tensor(&fx["zb"], b, d)).unwrap(),
        );
        let w = |k: &str| c[k].as_f64().unwrap() as f32;
        let weights = loss::Weights {
            invariance: w("invariance_weight"),
            variance: w("variance_weight"),
            covariance: w("covariance_weight"),
            eps: 1e-4,
        };
        let (l, metrics) = loss::vicreg(&za, &zb, weights).unwrap();
        assert_scalar("loss", l.item(), c["loss"].as_f64().unwrap(), 1e-5);
        let mut gr = g.backward(&l).unwrap();
        assert_close("dza", &gr.tensor(&za, &[b, d]).data, &floats(&c["dza"]), 1e-5);
        assert_close("dzb", &gr.tensor(&zb, &[b, d]).data, &floats(&c["dzb"]), 1e-5);
        for (name, v) in metrics {
            assert_scalar(&name, v, fx["terms"][&name].as_f64().unwrap(), 1e-5);
        }
    }
}

#[test]
fn expander_plus_loss_match_lightly() {
    let fx: Value = serde_json::from_str(HEADS).unwrap();
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let cfg = Config {
        input_dim: dim("input_dim"),
        hidden_dim: dim("hidden_dim"),
        output_dim: dim("output_dim"),
        ..Config::default()
    };
    let mut p = VicReg::new(cfg, &Context::default()).unwrap();
    let key = |n: &str| format!("layers.{}", n.strip_prefix("expander.").unwrap());
    let mut n = 0;
    p.visit_params(&mut |q| {
        q.value =
            floats(&fx["before"]["expander"][&key(&q.name)]).iter().map(|&x| x as f32).collect();
        n += 1;
    });
    assert_eq!(
        n,
        fx["before"]["expander"].as_object().unwrap().len(),
        "every tensor of lightly's head has its twin"
    );
    let (b, din) = (dim("b"), dim("input_dim"));
    let r = p
        .compute(ObjectiveBatch::training(
            vec![tensor(&fx["y1"], b, din), tensor(&fx["y2"], b, din)],
            vec![],
            0,
            1,
        ))
        .unwrap();
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dy1", &r.grads[0].data, &floats(&fx["dy1"]), 1e-5);
    assert_close("dy2", &r.grads[1].data, &floats(&fx["dy2"]), 1e-5);
    let gscale = fx["grads"]["expander"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(floats)
        .fold(0.0f64, |m, v| m.max(v.abs()));
    p.visit_params(&mut |q| {
        if q.trainable() {
            assert_close_floor(
                &format!("grad of {}", q.name),
                &q.grad,
                &floats(&fx["grads"]["expander"][&key(&q.name)]),
                1e-5,
                gscale,
            );
        }
        assert_close(
            &format!("{} after the step", q.name),
            &q.value,
            &floats(&fx["after"]["expander"][&key(&q.name)]),
            1e-5,
        );
    });
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<VicReg>(json, 7)
}

#[test]
fn gradients_through_the_expander_match_finite_differences() {
    use latent_sdk::check::{objective_gradients, FdOptions, ObjectiveCase};
    // The loss is about 25 times its terms at the default weights, so f32 rounding in each
    // difference is 25 times larger; the last bias's exact gradient is 0 (every term is
    // invariant to a shift of z), which a small step then misses, and a large step crosses the
    // ReLU and hinge kinks elsewhere. Each tensor keeps its better step of two, as
    // `check-plugin --deep` does.
    for json in [
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 6}"#,
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 6, "invariance": 1, "variance": 2, "covariance": 3}"#,
    ] {
        let mut obj = new_box(json);
        let case = ObjectiveCase {
            views: vec![random(&[6, 5], 1), random(&[6, 5], 2)],
            targets: vec![],
            labels: vec![],
        };
        let small =
            objective_gradients(&mut obj, &case, FdOptions { h: 2e-3, ..FdOptions::default() })
                .unwrap();
        let large =
            objective_gradients(&mut obj, &case, FdOptions { h: 1e-2, ..FdOptions::default() })
                .unwrap();
        assert_eq!(small.len(), 2 + 8, "2 views and the 8 trained tensors of the expander");
        for (a, b) in small.iter().zip(&large) {
            let err = a.error.min(b.error);
            assert!(
                err < 1e-2,
                "{json}: {} off by {err:.2e} (steps 2e-3: {:.2e}, 1e-2: {:.2e})",
                a.name,
                a.error,
                b.error
            );
        }
    }
}

#[test]
fn bad_config_is_refused_by_name() {
    latent_sdk::testing::assert_refused::<VicReg>(&[
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"variance": -1}"#, "variance"),
        (r#"{"eps": 0}"#, "eps"),
        (r#"{"lambda": 25}"#, "unknown field `lambda`"),
    ]);
}
