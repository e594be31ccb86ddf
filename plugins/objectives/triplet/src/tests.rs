//! Reference values (pytorch-metric-learning 2.9.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use abi_stable::std_types::RStr;
use latent_sdk::abi::ObjectiveBox;
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");
const HEAD: &str = include_str!("../fixtures/head.json");

fn labels(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn mining(s: &str) -> Mining {
    serde_json::from_value(Value::String(s.into())).unwrap()
}

/// Loss, d loss / d e and the metrics through the autodiff path.
fn triplet(
    e: &Tensor,
    labels: &[i64],
    margin: f64,
    mining: Mining,
) -> (f64, Vec<f32>, Vec<(String, f64)>) {
    let g = Graph::new(true);
    let v = g.input(e).unwrap();
    let (l, metrics) = loss::triplet(&v, labels, margin, mining).unwrap();
    let de = g.backward(&l).unwrap().of(&v);
    (l.item(), de, metrics)
}

#[test]
fn loss_matches_pytorch_metric_learning() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let (nv, b, d) = (dim("views"), dim("b"), dim("d"));
    let e = tensor(&fx["e"], nv * b, d);
    let lab: Vec<i64> = (0..nv).flat_map(|_| labels(&fx["labels"])).collect();
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let (margin, mode) = (c["margin"].as_f64().unwrap(), c["mining"].as_str().unwrap());
        let what = format!("{mode} at margin {margin}");
        let (l, de, metrics) = triplet(&e, &lab, margin, mining(mode));
        // the same triplets (pml lists them in another order)
        let t = c["triplets"].as_array().unwrap();
        let (a, p, n) = (labels(&t[0]), labels(&t[1]), labels(&t[2]));
        let mut want: Vec<(usize, usize, usize)> =
            (0..a.len()).map(|i| (a[i] as usize, p[i] as usize, n[i] as usize)).collect();
        let (dist, _, _) = loss::sq_distances(&e.data, nv * b, d);
        let mut got = loss::mine(&dist, &lab, margin, mining(mode));
        want.sort();
        got.sort();
        assert_eq!(got, want, "{what}: mined triplets");
        assert_scalar(&format!("{what}: loss"), l, c["loss"].as_f64().unwrap(), 1e-5);
        assert_close(&format!("{what}: de"), &de, &floats(&c["de"]), 1e-5);
        assert_eq!(metrics.len(), 4);
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
fn plugin_stacks_views_and_repeats_labels() {
    // the plugin on the two views gives what the loss gives on the stacked matrix
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (b, d) = (fx["b"].as_u64().unwrap() as usize, fx["d"].as_u64().unwrap() as usize);
    let e = floats(&fx["e"]);
    let c = &fx["cases"][1];
    let cfg = Config {
        margin: c["margin"].as_f64().unwrap(),
        mining: mining(c["mining"].as_str().unwrap()),
        ..Config::default()
    };
    let mut p = Triplet::new(cfg, &Context::default()).unwrap();
    let views = vec![
        tensor(&Value::from(e[..b * d].to_vec()), b, d),
        tensor(&Value::from(e[b * d..].to_vec()), b, d),
    ];
    let r = p
        .compute(ObjectiveBatch {
            views,
            targets: vec![],
            labels: labels(&fx["labels"]),
            step: 0,
            total_steps: 1,
            train: true,
        })
        .unwrap();
    assert_scalar("loss", r.loss as f64, c["loss"].as_f64().unwrap(), 1e-5);
    let want = floats(&c["de"]);
    assert_close("d view 0", &r.grads[0].data, &want[..b * d], 1e-5);
    assert_close("d view 1", &r.grads[1].data, &want[b * d..], 1e-5);
    assert_eq!(r.target_momentum, 1.0);
}

#[test]
fn head_plus_loss_match_pytorch() {
    let fx: Value = serde_json::from_str(HEAD).unwrap();
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let (nv, b, din, dout) = (dim("views"), dim("b"), dim("input_dim"), dim("head_dim"));
    let cfg =
        Config { margin: 0.2, mining: Mining::BatchHard, head_dim: Some(dout), input_dim: din };
    let mut p = Triplet::new(cfg, &Context::default()).unwrap();
    let h = p.head.as_mut().unwrap();
    h.weight.value = floats(&fx["weight"]).iter().map(|&v| v as f32).collect();
    h.bias.as_mut().unwrap().value = floats(&fx["bias"]).iter().map(|&v| v as f32).collect();
    let x = floats(&fx["x"]);
    let views: Vec<Tensor> = (0..nv)
        .map(|v| tensor(&Value::from(x[v * b * din..(v + 1) * b * din].to_vec()), b, din))
        .collect();
    let r = p
        .compute(ObjectiveBatch {
            views,
            targets: vec![],
            labels: labels(&fx["labels"]),
            step: 0,
            total_steps: 1,
            train: true,
        })
        .unwrap();
    assert_scalar("loss", r.loss as f64, fx["loss"].as_f64().unwrap(), 1e-5);
    let dx: Vec<f32> = r.grads.iter().flat_map(|g| g.data.iter().copied()).collect();
    assert_close("dx", &dx, &floats(&fx["dx"]), 1e-5);
    let h = p.head.as_ref().unwrap();
    assert_eq!(
        (h.weight.name.as_str(), h.bias.as_ref().unwrap().name.as_str()),
        ("head.weight", "head.bias")
    );
    assert_close("d head.weight", &h.weight.grad, &floats(&fx["dweight"]), 1e-5);
    assert_close("d head.bias", &h.bias.as_ref().unwrap().grad, &floats(&fx["dbias"]), 1e-5);
}

#[test]
fn semi_hard_prefers_the_closest_semi_hard_negative_else_the_hardest() {
    // one anchor-positive pair (0, 1) at d = 1; negatives 2, 3, 4 at d = 0.5, 1.3, 1.1
    let m = 5;
    let mut d = vec![9.0; m * m];
    let lab = [0, 0, 1, 2, 3];
    for (k, v) in [(1, 1.0), (2, 0.5), (3, 1.3), (4, 1.1)] {
        d[k] = v;
    }
    let t: Vec<_> =
        loss::mine(&d, &lab, 0.2, Mining::SemiHard).into_iter().filter(|t| t.0 == 0).collect();
    assert_eq!(t, vec![(0, 1, 4)], "1.1 is in (1, 1.2)");
    let t: Vec<_> =
        loss::mine(&d, &lab, 0.05, Mining::SemiHard).into_iter().filter(|t| t.0 == 0).collect();
    assert_eq!(t, vec![(0, 1, 2)], "none in (1, 1.05): the closest negative");
    let t: Vec<_> =
        loss::mine(&d, &lab, 0.2, Mining::BatchHard).into_iter().filter(|t| t.0 == 0).collect();
    assert_eq!(t, vec![(0, 1, 2)]);
}

#[test]
fn no_active_triplet_gives_zero_loss_and_gradient() {
    // two well separated classes: every triplet is easy
    let e = Tensor::new(vec![4, 2], vec![1.0, 0.0, 1.0, 0.01, -1.0, 0.0, -1.0, 0.01]);
    for mode in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        let (l, de, metrics) = triplet(&e, &[0, 0, 1, 1], 0.2, mode);
        assert_eq!(l, 0.0);
        assert!(de.iter().all(|&g| g == 0.0));
        assert_eq!(metrics[1], ("active_fraction".to_string(), 0.0));
    }
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<Triplet>(json, 7)
}

#[test]
fn gradients_match_finite_differences() {
    let lab = vec![0, 1, 0, 2, 1, 3];
    for json in [
        r#"{"mining": "all"}"#,
        r#"{"mining": "batch-hard", "margin": 0.5}"#,
        r#"{"mining": "semi-hard", "margin": 1.0}"#,
        r#"{"mining": "batch-hard", "head_dim": 3, "input_dim": 4}"#,
        r#"{"mining": "semi-hard", "head_dim": 3, "input_dim": 4, "margin": 1.0}"#,
    ] {
        let mut obj = new_box(json);
        let v = vec![random(&[6, 4], 1), random(&[6, 4], 2)];
        latent_sdk::check::assert_objective_gradients(&mut obj, v, vec![], lab.clone(), 1e-4, 1e-2);
    }
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let e = latent_sdk::plugin::new_objective::<Triplet>(
        RStr::from_str(r#"{"miner": "all"}"#),
        &Context::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("unknown field `miner`"), "{e}");
    let e = latent_sdk::plugin::new_objective::<Triplet>(
        RStr::from_str(r#"{"mining": "hard"}"#),
        &Context::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("hard") && e.to_string().contains("semi-hard"), "{e}");
}

#[test]
fn bad_values_are_refused() {
    latent_sdk::testing::assert_refused::<Triplet>(&[
        (r#"{"margin": -0.1}"#, "margin"),
        (r#"{"head_dim": 0}"#, "head_dim"),
    ]);
    let mut p = Triplet::new(Config::default(), &Context::default()).unwrap();
    let e = p
        .compute(ObjectiveBatch {
            views: vec![random(&[4, 3], 1)],
            targets: vec![],
            labels: vec![0, 1],
            step: 0,
            total_steps: 1,
            train: true,
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("4 samples per view but 2 labels"), "{e}");
}

#[test]
fn default_config_round_trips() {
    let c: Config = serde_json::from_str("{}").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!((c.margin, c.mining, c.head_dim, c.input_dim), (0.2, Mining::SemiHard, None, 128));
    let c: Config = serde_json::from_str(r#"{"mining": "batch-hard"}"#).unwrap();
    assert_eq!(c.mining, Mining::BatchHard);
}

#[test]
fn default_sized_batch_runs() {
    // a P x K = 16 x 16 batch, 2 views: 512 rows, 512 x 31 x 480 triplets for "all"
    let labels: Vec<i64> = (0..256).map(|i| i / 16).collect();
    for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        let mut p =
            Triplet::new(Config { mining, ..Config::default() }, &Context::default()).unwrap();
        let t = std::time::Instant::now();
        let r = p
            .compute(ObjectiveBatch {
                views: vec![random(&[256, 128], 1), random(&[256, 128], 2)],
                targets: vec![],
                labels: labels.clone(),
                step: 0,
                total_steps: 1,
                train: true,
            })
            .unwrap();
        eprintln!("triplet {mining:?}, batch 256 x 2 views: {:?}", t.elapsed());
        assert!(
            r.loss.is_finite()
                && r.loss > 0.0
                && r.grads.iter().all(|g| g.data.iter().all(|v| v.is_finite()))
        );
    }
}

#[test]
fn a_batch_without_any_triplet_is_an_error_not_a_zero_loss() {
    // regression: batch_size = 2 (one class per batch) or one-class data "trained" with loss 0
    let mut p = Triplet::new(Config::default(), &Context::default()).unwrap();
    for labels in [vec![3, 3], vec![1, 1, 1, 1], vec![0, 1, 2, 3]] {
        let n = labels.len();
        let e = p
            .compute(ObjectiveBatch {
                views: vec![random(&[n, 4], 1)],
                targets: vec![],
                labels,
                step: 0,
                total_steps: 1,
                train: true,
            })
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("no valid triplet")
                && e.to_string().contains("train.batch_size"),
            "{e}"
        );
    }
}
