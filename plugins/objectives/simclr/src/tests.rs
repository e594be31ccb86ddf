//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use abi_stable::std_types::{RStr, RVec};
use latent_sdk::abi::{ObjectiveBox, ObjectiveInput, ParamRole};
use latent_sdk::kit::gradcheck::random;
use serde_json::Value;

const NT_XENT: &str = include_str!("../fixtures/nt_xent.json");
const HEAD: &str = include_str!("../fixtures/head.json");

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().unwrap()).collect()
}

fn tensor(v: &Value, n: usize, d: usize) -> Tensor {
    Tensor::new(vec![n, d], floats(v).iter().map(|&x| x as f32).collect())
}

/// max |a − b| / max(|b|) over the tensor (relative to the reference's scale).
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / scale;
    assert!(err < tol, "{what}: relative error {err:.2e}\n got {got:?}\nwant {want:?}");
}

fn assert_scalar(what: &str, got: f64, want: f64, tol: f64) {
    let err = (got - want).abs() / want.abs().max(1e-12);
    assert!(err < tol, "{what}: got {got}, want {want} (relative error {err:.2e})");
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
        let r = loss::nt_xent(&tensor(&c["z1"], n, d), &tensor(&c["z2"], n, d), t, pid).unwrap();
        assert_scalar(&format!("{what}: loss"), r.loss, c["loss"].as_f64().unwrap(), 1e-5);
        assert_close(&format!("{what}: dz1"), &r.dz1.data, &floats(&c["dz1"]), 1e-5);
        assert_close(&format!("{what}: dz2"), &r.dz2.data, &floats(&c["dz2"]), 1e-5);
        for (name, value) in &r.metrics {
            let want = if name == "loss" { c["loss"].as_f64().unwrap() } else { c["metrics"][name].as_f64().unwrap() };
            assert_scalar(&format!("{what}: metric {name}"), *value, want, 1e-6);
        }
    }
}

#[test]
fn dcl_drops_the_positive_from_the_denominator() {
    // with identical views, NT-Xent's l(i) = log(e^{1/τ} + Σ_neg) − 1/τ > DCL's log Σ_neg − 1/τ
    let z = random(&[4, 3], 5);
    let a = loss::nt_xent(&z, &z, 0.5, true).unwrap().loss;
    let b = loss::nt_xent(&z, &z, 0.5, false).unwrap().loss;
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
        ["projector.0.weight", "projector.1.weight", "projector.1.bias", "projector.1.running_mean",
         "projector.1.running_var", "projector.3.weight", "projector.3.bias"]
    );
    let (n, din) = (fx["n"].as_u64().unwrap() as usize, fx["input_dim"].as_u64().unwrap() as usize);
    let views = vec![tensor(&fx["x1"], n, din), tensor(&fx["x2"], n, din)];
    let r = p
        .compute(ObjectiveBatch { views, targets: vec![], labels: vec![], step: 0, total_steps: 10, train: true })
        .unwrap();
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    assert_close("dx1", &r.grads[0].data, &floats(&fx["dx1"]), 1e-5);
    assert_close("dx2", &r.grads[1].data, &floats(&fx["dx2"]), 1e-5);
    p.visit_params(&mut |q| {
        let tn = torch_name(&q.name);
        if q.trainable() {
            assert_close(&format!("grad of {}", q.name), &q.grad, &floats(&fx["param_grads"][&tn]), 1e-5);
        }
        // running statistics after the two per-view forwards
        assert_close(&format!("{} after the step", q.name), &q.value, &floats(&fx["params_after"][&tn]), 1e-5);
    });
}

/// Finite-difference check of an objective through its ABI object: d loss / d views from
/// `compute`, parameter gradients from `take_grads`, both against central differences of the
/// f64 `loss` metric. Buffers are restored before every evaluation. Errors are measured
/// relative to the largest gradient of each tensor, at least 1e-2 (f32 noise of the heads).
pub fn fd_check(obj: &mut ObjectiveBox, views: Vec<Tensor>, targets: Vec<Tensor>, labels: Vec<i64>, h: f32, tol: f64) {
    let input = |views: &[Tensor]| ObjectiveInput {
        views: views.iter().cloned().map(Tensor::into_desc).collect(),
        targets: targets.iter().cloned().map(Tensor::into_desc).collect(),
        labels: labels.clone().into(),
        step: 3,
        total_steps: 10,
        train: true,
    };
    let descs = obj.params().unwrap();
    let start: Vec<Tensor> = obj.read_params().unwrap().into_iter().map(|d| Tensor::from_desc(d).unwrap()).collect();
    let _ = obj.take_grads().unwrap();
    let out = obj.compute(input(&views)).unwrap();
    let pgrads: Vec<Tensor> = obj.take_grads().unwrap().into_iter().map(|d| Tensor::from_desc(d).unwrap()).collect();
    let mut loss_at = |views: &[Tensor], params: &[Tensor]| -> f64 {
        obj.write_params(params.iter().cloned().map(Tensor::into_desc).collect::<RVec<_>>()).unwrap();
        let o = obj.compute(input(views)).unwrap();
        o.metrics.iter().find(|m| m.name.as_str() == "loss").expect("a loss metric").value
    };
    let check = |what: &str, ana: &[f32], num: &[f64]| {
        let scale = ana.iter().map(|&v| v as f64).chain(num.iter().copied()).fold(1e-2f64, |m, v| m.max(v.abs()));
        let err = ana.iter().zip(num).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / scale;
        assert!(err < tol, "{what}: finite differences off by {err:.2e}\nanalytic {ana:?}\nnumeric {num:?}");
    };
    assert_eq!(out.grads.len(), views.len());
    for (v, g) in out.grads.iter().enumerate() {
        let g = Tensor::from_desc(g.clone()).unwrap();
        assert_eq!(g.shape, views[v].shape);
        let mut num = Vec::new();
        for j in 0..views[v].len() {
            let mut vs = views.clone();
            vs[v].data[j] += h;
            let lp = loss_at(&vs, &start);
            vs[v].data[j] -= 2.0 * h;
            let lm = loss_at(&vs, &start);
            num.push((lp - lm) / (2.0 * h as f64));
        }
        check(&format!("d loss / d view {v}"), &g.data, &num);
    }
    let mut checked = 0;
    for (pi, d) in descs.iter().enumerate() {
        if !matches!(d.role, ParamRole::Weight | ParamRole::NoDecay) {
            assert!(pgrads[pi].is_empty(), "{} is not trained but has a gradient", d.name);
            continue;
        }
        let mut num = Vec::new();
        for j in 0..start[pi].len() {
            let mut ps = start.clone();
            ps[pi].data[j] += h;
            let lp = loss_at(&views, &ps);
            ps[pi].data[j] -= 2.0 * h;
            let lm = loss_at(&views, &ps);
            num.push((lp - lm) / (2.0 * h as f64));
        }
        check(&format!("d loss / d {}", d.name), &pgrads[pi].data, &num);
        checked += 1;
    }
    assert!(checked > 0 || descs.is_empty());
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::plugin::new_objective::<SimClr>(RStr::from_str(json), &Context { seed: 7, ..Context::default() }).unwrap()
}

#[test]
fn gradients_through_the_head_match_finite_differences() {
    for json in [
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "temperature": 0.5}"#,
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "temperature": 0.1, "positive_in_denominator": false}"#,
    ] {
        let mut obj = new_box(json);
        fd_check(&mut obj, vec![random(&[6, 5], 1), random(&[6, 5], 2)], vec![], vec![], 1e-3, 1e-2);
    }
}

#[test]
fn gradients_without_head_match_finite_differences() {
    let mut obj = new_box(r#"{"head": false, "temperature": 0.2}"#);
    fd_check(&mut obj, vec![random(&[5, 3], 3), random(&[5, 3], 4)], vec![], vec![], 1e-3, 1e-2);
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let e = latent_sdk::plugin::new_objective::<SimClr>(RStr::from_str(r#"{"temprature": 0.3}"#), &Context::default()).err().expect("refused");
    assert!(e.to_string().contains("temprature"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    for (json, msg) in [(r#"{"temperature": 0}"#, "temperature"), (r#"{"temperature": -1.0}"#, "temperature"), (r#"{"hidden_dim": 0}"#, "hidden_dim")] {
        let e = latent_sdk::plugin::new_objective::<SimClr>(RStr::from_str(json), &Context::default()).err().expect("refused");
        assert!(e.to_string().contains(msg), "{json}: {e}");
    }
}

#[test]
fn exactly_two_views_are_required() {
    let mut p = SimClr::new(Config { head: false, ..Config::default() }, &Context::default()).unwrap();
    let v = random(&[4, 3], 1);
    let e = p
        .compute(ObjectiveBatch { views: vec![v.clone(), v.clone(), v], targets: vec![], labels: vec![], step: 0, total_steps: 1, train: true })
        .err()
        .unwrap();
    assert!(e.to_string().contains("exactly 2 views, got 3"), "{e}");
}

#[test]
fn eval_returns_no_gradients_and_keeps_buffers() {
    let mut p = SimClr::new(Config { input_dim: 3, hidden_dim: 4, output_dim: 2, ..Config::default() }, &Context::default()).unwrap();
    let mut before = Vec::new();
    p.visit_params(&mut |q| before.push(q.value.clone()));
    let r = p
        .compute(ObjectiveBatch { views: vec![random(&[4, 3], 1), random(&[4, 3], 2)], targets: vec![], labels: vec![], step: 0, total_steps: 1, train: false })
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
    assert_eq!((c.input_dim, c.hidden_dim, c.output_dim, c.temperature, c.positive_in_denominator), (128, 512, 128, 0.5, true));
}

#[test]
fn default_sized_batch_runs() {
    // 256 samples x 2 views at the default sizes: all finite, one gradient per view
    let mut p = SimClr::new(Config::default(), &Context::default()).unwrap();
    let t = std::time::Instant::now();
    let r = p
        .compute(ObjectiveBatch { views: vec![random(&[256, 128], 1), random(&[256, 128], 2)], targets: vec![], labels: vec![], step: 0, total_steps: 1, train: true })
        .unwrap();
    eprintln!("simclr, batch 256: {:?}", t.elapsed());
    assert!(r.loss.is_finite() && r.grads.iter().all(|g| g.shape == [256, 128] && g.data.iter().all(|v| v.is_finite())));
}
