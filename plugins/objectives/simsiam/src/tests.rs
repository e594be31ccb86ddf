//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use latent_sdk::abi::{ObjectiveBox, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_close_floor, assert_scalar, floats, tensor};
use serde_json::Value;

const HEADS: &str = include_str!("../fixtures/heads.json");

/// `projector.0.weight` → (`projector`, `layers.0.weight`): lightly's heads wrap an
/// `nn.Sequential` called `layers`. The target projector is the projector (τ = 0).
fn torch_key(ours: &str) -> (String, String) {
    let (head, rest) = ours.split_once('.').unwrap();
    (head.strip_prefix("target_").unwrap_or(head).to_string(), format!("layers.{rest}"))
}

#[test]
fn heads_plus_loss_match_lightly() {
    let fx: Value = serde_json::from_str(HEADS).unwrap();
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let cfg = Config {
        input_dim: dim("input_dim"),
        proj_hidden_dim: dim("proj_hidden_dim"),
        output_dim: dim("output_dim"),
        pred_hidden_dim: dim("pred_hidden_dim"),
    };
    let mut p = SimSiam::new(cfg, &Context::default()).unwrap();
    let mut names = vec![];
    p.visit_params(&mut |q| {
        let (h, k) = torch_key(&q.name);
        q.value = floats(&fx["before"][&h][&k]).iter().map(|&x| x as f32).collect();
        if !q.name.starts_with("target_") {
            names.push(k);
        }
    });
    // every tensor of lightly's state dict has its twin here, and no other (the last
    // batch-norm of the projector has no γ or β)
    for h in ["projector", "predictor"] {
        for k in fx["before"][h].as_object().unwrap().keys() {
            assert!(names.contains(k), "{h}.{k} of lightly's head is missing");
        }
    }
    assert_eq!(
        names.len(),
        fx["before"]["projector"].as_object().unwrap().len()
            + fx["before"]["predictor"].as_object().unwrap().len()
    );
    let (b, din) = (dim("b"), dim("input_dim"));
    let r = p
        .compute(ObjectiveBatch {
            // at τ = 0 the host passes the online features as the targets
            views: vec![tensor(&fx["y1"], b, din), tensor(&fx["y2"], b, din)],
            targets: vec![tensor(&fx["y1"], b, din), tensor(&fx["y2"], b, din)],
            labels: vec![],
            step: 0,
            total_steps: 10,
            train: true,
        })
        .unwrap();
    assert_eq!(r.target_momentum, 0.0, "the target is the online network: τ = 0");
    assert_eq!(r.grads.len(), 2, "one gradient per online view, none for the targets");
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dy1", &r.grads[0].data, &floats(&fx["dy1"]), 1e-5);
    assert_close("dy2", &r.grads[1].data, &floats(&fx["dy2"]), 1e-5);
    let collapse = r.metrics.iter().find(|m| m.0 == "collapse").unwrap().1;
    assert_scalar("collapse", collapse, fx["collapse"].as_f64().unwrap(), 1e-5);
    let gscale = ["projector", "predictor"]
        .iter()
        .flat_map(|h| fx["grads"][h].as_object().unwrap().values().flat_map(floats))
        .fold(0.0f64, |m, v| m.max(v.abs()));
    let mut checked = 0;
    p.visit_params(&mut |q| {
        let (h, k) = torch_key(&q.name);
        if q.trainable() {
            assert_close_floor(
                &format!("grad of {}", q.name),
                &q.grad,
                &floats(&fx["grads"][&h][&k]),
                1e-5,
                gscale,
            );
            checked += 1;
        } else {
            assert!(q.grad.iter().all(|&g| g == 0.0), "{} got a gradient", q.name);
        }
        // running statistics after the per-view forwards (the target projector's saw the same
        // inputs); a mean that is zero in exact arithmetic leaves f32 noise: floor 1e-2
        assert_close_floor(
            &format!("{} after the step", q.name),
            &q.value,
            &floats(&fx["after"][&h][&k]),
            1e-5,
            1e-2,
        );
    });
    assert_eq!(
        checked, 12,
        "projector: 3 weights and 2 × (γ, β); predictor: 2 weights, a bias, γ and β"
    );
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<SimSiam>(json, 7)
}

#[test]
fn gradients_through_projector_and_predictor_match_finite_differences() {
    let mut obj =
        new_box(r#"{"input_dim": 5, "proj_hidden_dim": 8, "output_dim": 6, "pred_hidden_dim": 3}"#);
    let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
    let t = vec![random(&[6, 5], 3), random(&[6, 5], 4)];
    latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 4e-3, 1e-2);
}

#[test]
fn parameters_are_lightly_named_and_roled() {
    let mut obj =
        new_box(r#"{"input_dim": 5, "proj_hidden_dim": 8, "output_dim": 6, "pred_hidden_dim": 3}"#);
    let table: Vec<(String, ParamRole)> =
        obj.params().unwrap().iter().map(|d| (d.name.to_string(), d.role)).collect();
    use ParamRole::*;
    let want: Vec<(String, ParamRole)> = [
        ("projector.0.weight", Weight),
        ("projector.1.weight", NoDecay),
        ("projector.1.bias", NoDecay),
        ("projector.1.running_mean", Buffer),
        ("projector.1.running_var", Buffer),
        ("projector.3.weight", Weight),
        ("projector.4.weight", NoDecay),
        ("projector.4.bias", NoDecay),
        ("projector.4.running_mean", Buffer),
        ("projector.4.running_var", Buffer),
        ("projector.6.weight", Weight),
        ("projector.7.running_mean", Buffer),
        ("projector.7.running_var", Buffer),
        ("predictor.0.weight", Weight),
        ("predictor.1.weight", NoDecay),
        ("predictor.1.bias", NoDecay),
        ("predictor.1.running_mean", Buffer),
        ("predictor.1.running_var", Buffer),
        ("predictor.3.weight", Weight),
        ("predictor.3.bias", NoDecay),
        ("target_projector.0.weight", Target),
        ("target_projector.1.weight", Target),
        ("target_projector.1.bias", Target),
        ("target_projector.1.running_mean", Buffer),
        ("target_projector.1.running_var", Buffer),
        ("target_projector.3.weight", Target),
        ("target_projector.4.weight", Target),
        ("target_projector.4.bias", Target),
        ("target_projector.4.running_mean", Buffer),
        ("target_projector.4.running_var", Buffer),
        ("target_projector.6.weight", Target),
        ("target_projector.7.running_mean", Buffer),
        ("target_projector.7.running_var", Buffer),
    ]
    .iter()
    .map(|(n, r)| (n.to_string(), *r))
    .collect();
    assert_eq!(table, want);
}

#[test]
fn bad_config_is_refused_by_name() {
    latent_sdk::testing::assert_refused::<SimSiam>(&[
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"pred_hidden_dim": 0}"#, "pred_hidden_dim"),
        (r#"{"hidden_dim": 8}"#, "unknown field `hidden_dim`"),
    ]);
    let mut p =
        SimSiam::new(Config { input_dim: 3, ..Config::default() }, &Context::default()).unwrap();
    let e =
        p.compute(ObjectiveBatch::training(vec![random(&[4, 3], 1)], vec![], 0, 1)).err().unwrap();
    assert!(e.to_string().contains("exactly 2 views"), "{e}");
    let v = vec![random(&[4, 3], 1), random(&[4, 3], 2)];
    let e = p.compute(ObjectiveBatch::training(v, vec![], 0, 1)).err().unwrap();
    assert!(e.to_string().contains("target"), "{e}");
}
