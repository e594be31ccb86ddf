//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use abi_stable::std_types::RStr;
use latent_sdk::abi::ObjectiveBox;
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const NT_XENT: &str = include_str!("../fixtures/nt_xent.json");
const HEAD: &str = include_str!("../fixtures/head.json");

/// Loss, d loss / d z1, d loss / d z2 and the metrics.
type LossGradsMetrics = (f64, Vec<f32>, Vec<f32>, Vec<(String, f64)>);

/// Loss, d loss / d z1, d loss / d z2 and the metrics, through the autodiff path.
fn nt_xent(z1: &Tensor, z2: &Tensor, t: f64, pid: bool) -> LossGradsMetrics {
    let g = Graph::new(true);
    let (a, b) = (g.input(z1).unwrap(), g.input(z2).unwrap());
    let l = loss::nt_xent(&a, &b, t as f32, pid);
    let m = loss::metrics(&a, &b);
    let mut gr = g.backward(&l).unwrap();
    (l.item(), gr.of(&a), gr.of(&b), m)
}

#[test]
fn nt_xent_and_dcl_match_lightly() {
    let fx: Value = serde_json::from_str(NT_XENT).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for c in cases {
        let (n, d) = (c["n"].as_u64().unwrap() as usize, c["d"].as_u64().unwrap() as usize);
        let t = c["temperature"].as_f64().unwrap();
        let pid = c["positive_in_denominator"].as_bool().unwrap();
        let what = format!("{} at temperature {t}", c["loss_fn"]);
        let (l, dz1, dz2, metrics) =
            nt_xent(&tensor(&c["z1"], n, d), &tensor(&c["z2"], n, d), t, pid);
        assert_scalar(&format!("{what}: loss"), l, c["loss"].as_f64().unwrap(), 1e-5);
        assert_close(&format!("{what}: dz1"), &dz1, &floats(&c["dz1"]), 1e-5);
        assert_close(&format!("{what}: dz2"), &dz2, &floats(&c["dz2"]), 1e-5);
        assert_eq!(metrics.len(), 3);
        for (name, value) in &metrics {
            assert_scalar(
                &format!("{what}: metric {name}"),
                *value,
                c["metrics"][name].as_f64().unwrap(),
                1e-6,
            );
        }
    }
}

#[test]
fn dcl_drops_the_positive_from_the_denominator() {
    // with identical views, NT-Xent's l(i) = log(e^{1/τ} + Σ_neg) − 1/τ > DCL's log Σ_neg − 1/τ
    let z = random(&[4, 3], 5);
    let a = nt_xent(&z, &z, 0.5, true).0;
    let b = nt_xent(&z, &z, 0.5, false).0;
    assert!(a > b, "{a} <= {b}");
}

fn head_cfg(fx: &Value) -> Config {
    Config {
        input_dim: fx["input_dim"].as_u64().unwrap() as usize,
        hidden_dim: fx["hidden_dim"].as_u64().unwrap() as usize,
        output_dim: fx["output_dim"].as_u64().unwrap() as usize,
        temperature: fx["temperature"].as_f64().unwrap(),
        ..Config::default()
    }
}

fn torch_name(ours: &str) -> String {
    ours.replacen("projector.", "layers.", 1)
}

#[test]
fn head_plus_loss_match_pytorch() {
    let fx: Value = serde_json::from_str(HEAD).unwrap();
    let mut p = SimClr::new(head_cfg(&fx), &Context::default()).unwrap();
    let mut names = Vec::new();
    p.visit_params(&mut |q| {
        q.value = floats(&fx["params"][torch_name(&q.name)]).iter().map(|&x| x as f32).collect();
        names.push(q.name.clone());
    });
    assert_eq!(
        names,
        [
            "projector.0.weight",
            "projector.1.weight",
            "projector.1.bias",
            "projector.1.running_mean",
            "projector.1.running_var",
            "projector.3.weight",
            "projector.3.bias"
        ]
    );
    let (n, din) = (fx["n"].as_u64().unwrap() as usize, fx["input_dim"].as_u64().unwrap() as usize);
    let views = vec![tensor(&fx["x1"], n, din), tensor(&fx["x2"], n, din)];
    let r = p.compute(ObjectiveBatch::training(views, vec![], 0, 10)).unwrap();
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dx1", &r.grads[0].data, &floats(&fx["dx1"]), 1e-5);
    assert_close("dx2", &r.grads[1].data, &floats(&fx["dx2"]), 1e-5);
    p.visit_params(&mut |q| {
        let tn = torch_name(&q.name);
        if q.trainable() {
            assert_close(
                &format!("grad of {}", q.name),
                &q.grad,
                &floats(&fx["param_grads"][&tn]),
                1e-5,
            );
        }
        // running statistics after the two per-view forwards
        assert_close(
            &format!("{} after the step", q.name),
            &q.value,
            &floats(&fx["params_after"][&tn]),
            1e-5,
        );
    });
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<SimClr>(json, 7)
}

#[test]
fn gradients_through_the_head_match_finite_differences() {
    for json in [
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "temperature": 0.5}"#,
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "temperature": 0.1, "positive_in_denominator": false}"#,
    ] {
        let mut obj = new_box(json);
        latent_sdk::check::assert_objective_gradients(
            &mut obj,
            vec![random(&[6, 5], 1), random(&[6, 5], 2)],
            vec![],
            vec![],
            1e-3,
            1e-2,
        );
    }
}

#[test]
fn gradients_without_head_match_finite_differences() {
    let mut obj = new_box(r#"{"head": false, "temperature": 0.2}"#);
    latent_sdk::check::assert_objective_gradients(
        &mut obj,
        vec![random(&[5, 3], 3), random(&[5, 3], 4)],
        vec![],
        vec![],
        1e-3,
        1e-2,
    );
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let e = latent_sdk::plugin::new_objective::<SimClr>(
        RStr::from_str(r#"{"temprature": 0.3}"#),
        &Context::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("temprature"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    latent_sdk::testing::assert_refused::<SimClr>(&[
        (r#"{"temperature": 0}"#, "temperature"),
        (r#"{"temperature": -1.0}"#, "temperature"),
        (r#"{"hidden_dim": 0}"#, "hidden_dim"),
    ]);
}

#[test]
fn exactly_two_views_are_required() {
    let mut p =
        SimClr::new(Config { head: false, ..Config::default() }, &Context::default()).unwrap();
    let v = random(&[4, 3], 1);
    let e = p
        .compute(ObjectiveBatch::training(vec![v.clone(), v.clone(), v], vec![], 0, 1))
        .err()
        .unwrap();
    assert!(e.to_string().contains("exactly 2 views, got 3"), "{e}");
}

#[test]
fn eval_returns_no_gradients_and_keeps_buffers() {
    let mut p = SimClr::new(
        Config { input_dim: 3, hidden_dim: 4, output_dim: 2, ..Config::default() },
        &Context::default(),
    )
    .unwrap();
    let mut before = Vec::new();
    p.visit_params(&mut |q| before.push(q.value.clone()));
    let r = p
        .compute(ObjectiveBatch {
            views: vec![random(&[4, 3], 1), random(&[4, 3], 2)],
            targets: vec![],
            labels: vec![],
            step: 0,
            total_steps: 1,
            train: false,
        })
        .unwrap();
    assert!(r.grads.is_empty() && r.loss.is_finite() && r.target_momentum == 1.0);
    let mut after = Vec::new();
    p.visit_params(&mut |q| after.push(q.value.clone()));
    assert_eq!(before, after);
}

#[test]
fn default_config_round_trips() {
    let c: Config = serde_json::from_str("{}").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(
        (c.input_dim, c.hidden_dim, c.output_dim, c.temperature, c.positive_in_denominator),
        (128, 512, 128, 0.5, true)
    );
}

#[test]
fn default_sized_batch_runs() {
    // 256 samples x 2 views at the default sizes: all finite, one gradient per view
    let mut p = SimClr::new(Config::default(), &Context::default()).unwrap();
    let t = std::time::Instant::now();
    let r = p
        .compute(ObjectiveBatch::training(
            vec![random(&[256, 128], 1), random(&[256, 128], 2)],
            vec![],
            0,
            1,
        ))
        .unwrap();
    eprintln!("simclr, batch 256: {:?}", t.elapsed());
    assert!(
        r.loss.is_finite()
            && r.grads
                .iter()
                .all(|g| g.shape == [256, 128] && g.data.iter().all(|v| v.is_finite()))
    );
}

/// The bench's objective step (two views of 256 × 128, the default head), best of `REPS` (20):
/// `cargo test --release -p latent-plugin-simclr time_objective -- --ignored --nocapture`.
#[test]
#[ignore]
fn time_objective() {
    let reps: usize = std::env::var("REPS").ok().map_or(20, |v| v.parse().unwrap());
    let mut p = SimClr::new(Config::default(), &Context::default()).unwrap();
    let views = vec![random(&[256, 128], 1), random(&[256, 128], 2)];
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = std::time::Instant::now();
        p.compute(ObjectiveBatch::training(views.clone(), vec![], 0, 10)).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    eprintln!("simclr objective, 2 x 256 x 128: {:.2} ms (best of {reps})", best * 1e3);
}
