//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use latent_sdk::abi::{ObjectiveBox, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");
const CTR: &str = include_str!("../fixtures/ctr.json");

#[test]
fn info_nce_and_the_queue_update_match_lightly_memory_bank() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let u = |k: &str| fx[k].as_u64().unwrap() as usize;
    let (n, d, k, t) = (u("n"), u("d"), u("k"), fx["temperature"].as_f64().unwrap() as f32);
    let mut bank: Vec<f32> = floats(&fx["bank"]).iter().map(|&x| x as f32).collect();
    let mut ptr = 0usize;
    for (i, c) in fx["calls"].as_array().unwrap().iter().enumerate() {
        let g = Graph::new(true);
        let q = g.input(&tensor(&c["q"], n, d)).unwrap();
        let key = g.constant(&tensor(&c["k"], n, d)).unwrap();
        let queue = g.constant(&Tensor::new(vec![k, d], bank.clone())).unwrap();
        let (l, _) = loss::info_nce(&q, &key, &queue, t);
        assert_scalar(&format!("loss of call {i}"), l.item(), c["loss"].as_f64().unwrap(), 1e-5);
        let unit_keys = key.l2_normalize().values(); // before backward, which ends the graph
        let mut gr = g.backward(&l).unwrap();
        assert_close(
            &format!("dq of call {i}"),
            &gr.tensor(&q, &[n, d]).data,
            &floats(&c["dq"]),
            1e-5,
        );
        loss::enqueue(&mut bank, &mut ptr, &unit_keys, d);
        assert_eq!(ptr, c["ptr_after"].as_u64().unwrap() as usize, "pointer after call {i}");
        assert_close(&format!("queue after call {i}"), &bank, &floats(&c["bank_after"]), 1e-6);
    }
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<Moco>(json, 7)
}

#[test]
fn gradients_through_the_projector_match_finite_differences() {
    // the checker writes every parameter, the queue included, before each evaluation, so the
    // queue each evaluation sees is the one of the first
    let mut obj =
        new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "queue_size": 12}"#);
    let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
    let t = vec![random(&[6, 5], 3), random(&[6, 5], 4)];
    latent_sdk::check::assert_objective_gradients(
        &mut obj,
        v.clone(),
        t.clone(),
        vec![],
        4e-3,
        1e-2,
    );
    let mut obj = new_box(
        r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "queue_size": 12, "symmetric": true}"#,
    );
    // a hidden unit of view 1 lies within 4e-3 of its ReLU kink here: the smaller step
    latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 1e-3, 1e-2);
}

#[test]
fn the_queue_is_state_in_buffers_and_moves_only_in_training() {
    let mut obj =
        new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "queue_size": 10}"#);
    let roles: Vec<(String, ParamRole)> =
        obj.params().unwrap().iter().map(|d| (d.name.to_string(), d.role)).collect();
    assert_eq!(
        &roles[roles.len() - 2..],
        &[("queue".to_string(), ParamRole::Buffer), ("queue_ptr".to_string(), ParamRole::Buffer)]
    );
    let mut p = Moco::new(
        Config {
            input_dim: 5,
            hidden_dim: 8,
            output_dim: 4,
            queue_size: Some(10),
            ..Config::default()
        },
        &Context::default(),
    )
    .unwrap();
    let keys = |p: &Moco| p.queue.as_ref().unwrap().keys.value.clone();
    let ptr = |p: &Moco| p.queue.as_ref().unwrap().ptr.value[0];
    for row in keys(&p).chunks(4) {
        assert!(
            (row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5,
            "queued keys start as unit vectors"
        );
    }
    let batch = |train: bool| ObjectiveBatch {
        views: vec![random(&[4, 5], 1), random(&[4, 5], 2)],
        targets: vec![random(&[4, 5], 3), random(&[4, 5], 4)],
        labels: vec![],
        step: 0,
        total_steps: 10,
        train,
    };
    let before = keys(&p);
    let r = p.compute(batch(false)).unwrap();
    assert_eq!((keys(&p), ptr(&p)), (before.clone(), 0.0), "evaluation leaves the queue alone");
    assert_eq!(r.target_momentum, 0.99);
    let r = p.compute(batch(true)).unwrap();
    assert_eq!(ptr(&p), 4.0);
    assert_eq!(&keys(&p)[16..], &before[16..], "only the first 4 rows were written");
    assert_ne!(&keys(&p)[..16], &before[..16]);
    assert!(r.grads[1].data.iter().all(|&g| g == 0.0), "view 1 only gives keys: no gradient");
    assert!(r.grads[0].data.iter().any(|&g| g != 0.0));
    assert!((momentum(0.99, 5, 10) - 0.995).abs() < 1e-12 && momentum(0.99, 10, 10) == 1.0);
}

#[test]
fn bad_config_is_refused_by_name() {
    latent_sdk::testing::assert_refused::<Moco>(&[
        (r#"{"queue_size": 0}"#, "queue_size"),
        (r#"{"temperature": 0}"#, "temperature"),
        (r#"{"momentum_base": 1.5}"#, "momentum_base"),
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"queue": 8}"#, "unknown field `queue`"),
        (r#"{"version": "v3", "queue_size": 4096}"#, "queue_size is a v2 key"),
        (r#"{"version": "v4"}"#, "unknown variant `v4`"),
    ]);
}

#[test]
fn v3_symmetric_loss_matches_the_papers_pseudocode() {
    let fx: Value = serde_json::from_str(CTR).unwrap();
    let (n, d, t) = (
        fx["n"].as_u64().unwrap() as usize,
        fx["d"].as_u64().unwrap() as usize,
        fx["temperature"].as_f64().unwrap() as f32,
    );
    for (i, c) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let g = Graph::new(true);
        let q1 = g.input(&tensor(&c["q1"], n, d)).unwrap();
        let q2 = g.input(&tensor(&c["q2"], n, d)).unwrap();
        let k1 = g.constant(&tensor(&c["k1"], n, d)).unwrap();
        let k2 = g.constant(&tensor(&c["k2"], n, d)).unwrap();
        let (l, top1) = loss::symmetric_ctr([&q1, &q2], [&k1, &k2], t);
        assert!((0.0..=1.0).contains(&top1));
        assert_scalar(&format!("v3 loss of case {i}"), l.item(), c["loss"].as_f64().unwrap(), 1e-5);
        let mut gr = g.backward(&l).unwrap();
        assert_close(
            &format!("dq1 of case {i}"),
            &gr.tensor(&q1, &[n, d]).data,
            &floats(&c["dq1"]),
            1e-5,
        );
        assert_close(
            &format!("dq2 of case {i}"),
            &gr.tensor(&q2, &[n, d]).data,
            &floats(&c["dq2"]),
            1e-5,
        );
    }
}

#[test]
fn v3_gradients_through_projector_and_predictor_match_finite_differences() {
    let mut obj = new_box(r#"{"version": "v3", "input_dim": 5, "hidden_dim": 8, "output_dim": 4}"#);
    let names: Vec<String> = obj.params().unwrap().iter().map(|d| d.name.to_string()).collect();
    assert!(
        names.iter().any(|n| n == "predictor.0.weight")
            && names.iter().any(|n| n == "projector.4.running_mean"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("queue")), "v3 keeps no queue: {names:?}");
    let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
    let t = vec![random(&[6, 5], 3), random(&[6, 5], 4)];
    // two batch-norms over 6 rows and logits scaled by 1/τ = 5 curve the loss: a step of 4e-3
    // leaves a truncation error of 4e-2 here, 1e-3 one of 1.2e-3
    latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 1e-3, 1e-2);
}

#[test]
fn v3_trains_both_views_and_only_the_online_heads() {
    let mut p = Moco::new(
        Config {
            version: Version::V3,
            input_dim: 5,
            hidden_dim: 8,
            output_dim: 4,
            ..Config::default()
        },
        &Context::default(),
    )
    .unwrap();
    let r = p
        .compute(ObjectiveBatch::training(
            vec![random(&[4, 5], 1), random(&[4, 5], 2)],
            vec![random(&[4, 5], 3), random(&[4, 5], 4)],
            0,
            10,
        ))
        .unwrap();
    assert!(
        r.grads.iter().all(|g| g.data.iter().any(|&x| x != 0.0)),
        "both views give queries, so both get a gradient"
    );
    assert_eq!(r.target_momentum, 0.99);
    let mut roles = Vec::new();
    p.visit_params(&mut |q| roles.push((q.name.clone(), q.role)));
    assert!(
        roles
            .iter()
            .filter(|(n, _)| n.starts_with("target_projector"))
            .all(|(_, r)| *r != ParamRole::Weight),
        "{roles:?}"
    );
}

#[test]
fn symmetric_v2_averages_both_directions_and_queues_both_views_keys() {
    let cfg = Config {
        input_dim: 5,
        hidden_dim: 8,
        output_dim: 4,
        queue_size: Some(20),
        ..Config::default()
    };
    let batch = || {
        ObjectiveBatch::training(
            vec![random(&[4, 5], 1), random(&[4, 5], 2)],
            vec![random(&[4, 5], 3), random(&[4, 5], 4)],
            0,
            10,
        )
    };
    let loss = |r: &ObjectiveResult| r.metrics.iter().find(|(k, _)| k == "loss").unwrap().1;
    let mut one = Moco::new(cfg.clone(), &Context::default()).unwrap();
    let mut both =
        Moco::new(Config { symmetric: true, ..cfg.clone() }, &Context::default()).unwrap();
    let r1 = one.compute(batch()).unwrap();
    let r2 = both.compute(batch()).unwrap();
    // the other direction alone: swap the views and the targets
    let mut swapped = Moco::new(cfg, &Context::default()).unwrap();
    let mut b = batch();
    b.views.swap(0, 1);
    b.targets.swap(0, 1);
    let r3 = swapped.compute(b).unwrap();
    assert!(
        (loss(&r2) - (loss(&r1) + loss(&r3)) / 2.0).abs() < 1e-6,
        "{} vs ({} + {}) / 2",
        loss(&r2),
        loss(&r1),
        loss(&r3)
    );
    assert!(r2.grads.iter().all(|g| g.data.iter().any(|&x| x != 0.0)), "both views give queries");
    let q = both.queue.as_ref().unwrap();
    assert_eq!(q.ptr.value[0], 8.0, "two batches of 4 keys went in");
    assert_eq!(
        &q.keys.value[..16],
        &one.queue.as_ref().unwrap().keys.value[..16],
        "view 1's keys first, as the paper's"
    );
    let e = Moco::new(
        Config { version: Version::V3, symmetric: true, ..Config::default() },
        &Context::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("symmetric is a v2 key"), "{e}");
}
