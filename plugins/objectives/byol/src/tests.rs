//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use abi_stable::std_types::RStr;
use latent_sdk::abi::{ObjectiveBox, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_close_floor, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");
const TAU: &str = include_str!("../fixtures/tau.json");
const HEADS: &str = include_str!("../fixtures/heads.json");

#[test]
fn loss_matches_the_paper_formula_and_lightly() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (b, d) = (fx["b"].as_u64().unwrap() as usize, fx["d"].as_u64().unwrap() as usize);
    let t = |k: &str| tensor(&fx[k], b, d);
    let g = Graph::new(true);
    let (q1, q2) = (g.input(&t("q1")).unwrap(), g.input(&t("q2")).unwrap());
    let tg = Graph::no_grad(true);
    let lv = loss::byol_loss(&q1, &q2, &tg.input(&t("t1")).unwrap(), &tg.input(&t("t2")).unwrap());
    let l = lv.item();
    let mut gr = g.backward(&lv).unwrap();
    let (dq1, dq2) = (gr.tensor(&q1, &[b, d]), gr.tensor(&q2, &[b, d]));
    assert_scalar("loss", l, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dq1", &dq1.data, &floats(&fx["dq1"]), 1e-5);
    assert_close("dq2", &dq2.data, &floats(&fx["dq2"]), 1e-5);
    // the paper's symmetrised sum is 4 + 4 x lightly's 0.5 (NegCosSim + NegCosSim)
    assert_scalar("4 + 4 lightly", l, 4.0 + 4.0 * fx["lightly_loss"].as_f64().unwrap(), 1e-5);
    let l4: Vec<f64> = floats(&fx["lightly_dq1"]).iter().map(|v| 4.0 * v).collect();
    assert_close("4 x lightly dq1", &dq1.data, &l4, 1e-5);
    assert_scalar(
        "collapse",
        loss::collapse(&t("q1")).unwrap(),
        fx["collapse_q1"].as_f64().unwrap(),
        1e-6,
    );
}

#[test]
fn tau_schedule_matches_lightly_cosine_schedule() {
    let fx: Value = serde_json::from_str(TAU).unwrap();
    for c in fx["cases"].as_array().unwrap() {
        let (tb, k, n) = (
            c["tau_base"].as_f64().unwrap(),
            c["step"].as_u64().unwrap(),
            c["total_steps"].as_u64().unwrap(),
        );
        let got = loss::tau(tb, k, n);
        assert!(
            (got - c["tau"].as_f64().unwrap()).abs() < 1e-12,
            "tau({tb}, {k}, {n}) = {got}, want {}",
            c["tau"]
        );
    }
    // by hand: the start, the middle, the end, and past the end
    assert_eq!(loss::tau(0.996, 0, 100), 0.996);
    assert!((loss::tau(0.996, 50, 100) - 0.998).abs() < 1e-15);
    assert_eq!(loss::tau(0.996, 100, 100), 1.0);
    assert_eq!(loss::tau(0.996, 150, 100), 1.0);
    assert!((loss::tau(0.0, 5, 10) - 0.5).abs() < 1e-15);
}

#[test]
fn tau_is_returned_as_target_momentum() {
    let mut p = Byol::new(
        Config { input_dim: 3, hidden_dim: 4, output_dim: 2, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    let v = || vec![random(&[4, 3], 1), random(&[4, 3], 2)];
    for (step, want) in [(0u64, 0.996), (50, 0.998), (100, 1.0)] {
        let r = p.compute(ObjectiveBatch::training(v(), v(), step, 100)).unwrap();
        assert!((r.target_momentum - want).abs() < 1e-12, "step {step}: {}", r.target_momentum);
        assert_eq!(r.metrics.iter().find(|m| m.0 == "tau").unwrap().1, r.target_momentum);
    }
}

fn torch_key(ours: &str) -> (String, String) {
    let (head, rest) = ours.split_once('.').unwrap();
    (head.to_string(), format!("layers.{rest}"))
}

#[test]
fn heads_plus_loss_match_pytorch() {
    let fx: Value = serde_json::from_str(HEADS).unwrap();
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let cfg = Config {
        input_dim: dim("input_dim"),
        hidden_dim: dim("hidden_dim"),
        output_dim: dim("output_dim"),
        ..Config::default()
    };
    let mut p = Byol::new(cfg, &Context::default()).unwrap();
    p.visit_params(&mut |q| {
        let (h, k) = torch_key(&q.name);
        q.value = floats(&fx["before"][&h][&k]).iter().map(|&x| x as f32).collect();
    });
    let (b, din) = (dim("b"), dim("input_dim"));
    let r = p
        .compute(ObjectiveBatch::training(
            vec![tensor(&fx["y1"], b, din), tensor(&fx["y2"], b, din)],
            vec![tensor(&fx["yt1"], b, din), tensor(&fx["yt2"], b, din)],
            0,
            10,
        ))
        .unwrap();
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dy1", &r.grads[0].data, &floats(&fx["dy1"]), 1e-5);
    assert_close("dy2", &r.grads[1].data, &floats(&fx["dy2"]), 1e-5);
    let collapse = r.metrics.iter().find(|m| m.0 == "collapse").unwrap().1;
    assert_scalar("collapse", collapse, fx["collapse"].as_f64().unwrap(), 1e-5);
    // projector.3.bias has an exactly zero gradient when the predictor follows: a constant
    // shift of z passes the predictor's first Linear as a per-channel constant, which its
    // batch-norm removes. Compare such gradients relative to the largest parameter gradient.
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
        // running statistics of all three heads after the per-view forwards
        assert_close(
            &format!("{} after the step", q.name),
            &q.value,
            &floats(&fx["after"][&h][&k]),
            1e-5,
        );
    });
    assert_eq!(checked, 10);
}

#[test]
fn target_params_follow_the_right_online_params() {
    let mut obj = new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4}"#);
    let descs = obj.params().unwrap();
    let values: Vec<Tensor> =
        obj.read_params().unwrap().into_iter().map(|d| Tensor::from_desc(d).unwrap()).collect();
    let table: Vec<(String, ParamRole, Option<String>)> = descs
        .iter()
        .map(|d| {
            (d.name.to_string(), d.role, d.ema_of.as_ref().map(|s| s.to_string()).into_option())
        })
        .collect();
    let want = |n: &str, r: ParamRole, e: Option<&str>| (n.to_string(), r, e.map(str::to_string));
    use ParamRole::*;
    assert_eq!(
        table,
        vec![
            want("projector.0.weight", Weight, None),
            want("projector.1.weight", NoDecay, None),
            want("projector.1.bias", NoDecay, None),
            want("projector.1.running_mean", Buffer, None),
            want("projector.1.running_var", Buffer, None),
            want("projector.3.weight", Weight, None),
            want("projector.3.bias", NoDecay, None),
            want("predictor.0.weight", Weight, None),
            want("predictor.1.weight", NoDecay, None),
            want("predictor.1.bias", NoDecay, None),
            want("predictor.1.running_mean", Buffer, None),
            want("predictor.1.running_var", Buffer, None),
            want("predictor.3.weight", Weight, None),
            want("predictor.3.bias", NoDecay, None),
            want("target_projector.0.weight", Target, Some("projector.0.weight")),
            want("target_projector.1.weight", Target, Some("projector.1.weight")),
            want("target_projector.1.bias", Target, Some("projector.1.bias")),
            want("target_projector.1.running_mean", Buffer, None),
            want("target_projector.1.running_var", Buffer, None),
            want("target_projector.3.weight", Target, Some("projector.3.weight")),
            want("target_projector.3.bias", Target, Some("projector.3.bias")),
        ]
    );
    // each target starts equal to its online parameter, with the same shape
    for (i, d) in descs.iter().enumerate() {
        if let Some(src) = d.ema_of.as_ref().into_option() {
            let j = descs.iter().position(|e| e.name.as_str() == src.as_str()).unwrap();
            assert_eq!(values[i], values[j], "{} starts as {}", d.name, src);
        }
    }
    // without a predictor there are no predictor parameters
    let mut obj =
        new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "predictor": false}"#);
    let names: Vec<String> = obj.params().unwrap().iter().map(|d| d.name.to_string()).collect();
    assert_eq!(names.len(), 14);
    assert!(names.iter().all(|n| !n.starts_with("predictor")));
}

#[test]
fn targets_get_no_gradient_and_target_buffers_move_in_training() {
    let mut p = Byol::new(
        Config { input_dim: 3, hidden_dim: 4, output_dim: 2, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    let r = p
        .compute(ObjectiveBatch::training(
            vec![random(&[4, 3], 1), random(&[4, 3], 2)],
            vec![random(&[4, 3], 3), random(&[4, 3], 4)],
            0,
            10,
        ))
        .unwrap();
    assert_eq!(r.grads.len(), 2, "one gradient per online view, none for targets");
    let mut moved = false;
    p.target_projector.visit_params(&mut |q| {
        moved |= q.name == "target_projector.1.running_mean" && q.value.iter().any(|&v| v != 0.0)
    });
    assert!(moved, "the target's batch-norm running mean moved");
    let mut tgrad = 0.0f32;
    p.target_projector.visit_params(&mut |q| tgrad += q.grad.iter().map(|g| g.abs()).sum::<f32>());
    assert_eq!(tgrad, 0.0);
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<Byol>(json, 7)
}

#[test]
fn gradients_through_projector_and_predictor_match_finite_differences() {
    for json in [
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4}"#,
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "predictor": false, "tau_base": 0}"#,
    ] {
        let mut obj = new_box(json);
        let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
        let t = vec![random(&[6, 5], 3), random(&[6, 5], 4)];
        // The loss is f32 now (the hand-written version summed in f64): a step of 1e-3 leaves
        // ~1e-4 of rounding noise in each difference, 1.2 % of the 1e-2 floor on
        // projector.3.bias, whose exact gradient is 0 (the predictor's batch-norm removes any
        // constant shift). A step of 4e-3 keeps the noise at a quarter of that.
        latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 4e-3, 1e-2);
    }
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let e = latent_sdk::plugin::new_objective::<Byol>(
        RStr::from_str(r#"{"tau": 0.99}"#),
        &Context::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("unknown field `tau`"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    latent_sdk::testing::assert_refused::<Byol>(&[
        (r#"{"tau_base": 1.5}"#, "tau_base"),
        (r#"{"tau_base": -0.1}"#, "tau_base"),
        (r#"{"output_dim": 0}"#, "output_dim"),
    ]);
    assert!(Byol::new(Config { tau_base: 0.0, ..Config::default() }, &Context::default()).is_ok());
}

#[test]
fn views_and_targets_are_required() {
    let mut p = Byol::new(
        Config { input_dim: 3, hidden_dim: 4, output_dim: 2, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    let v = vec![random(&[4, 3], 1), random(&[4, 3], 2)];
    let e = p.compute(ObjectiveBatch::training(v, vec![], 0, 1)).err().unwrap();
    assert!(e.to_string().contains("target"), "{e}");
}

#[test]
fn default_config_round_trips() {
    let c: Config = serde_json::from_str("{}").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(
        (c.input_dim, c.hidden_dim, c.output_dim, c.predictor, c.tau_base),
        (128, 512, 128, true, 0.996)
    );
}

#[test]
fn default_sized_batch_runs() {
    let mut p = Byol::new(Config::default(), &Context::default()).unwrap();
    let v = || vec![random(&[256, 128], 1), random(&[256, 128], 2)];
    let t = std::time::Instant::now();
    let r = p.compute(ObjectiveBatch::training(v(), v(), 0, 1)).unwrap();
    eprintln!("byol, batch 256: {:?}", t.elapsed());
    assert!(
        r.loss.is_finite()
            && r.grads
                .iter()
                .all(|g| g.shape == [256, 128] && g.data.iter().all(|v| v.is_finite()))
    );
    let collapse = r.metrics.iter().find(|m| m.0 == "collapse").unwrap().1;
    assert!(collapse > 0.1 && collapse < 1.5, "collapse {collapse}");
}
