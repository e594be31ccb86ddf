//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use abi_stable::std_types::RStr;
use latent_sdk::abi::{ObjectiveBox, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");

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
        assert_close(&format!("dq of call {i}"), &gr.tensor(&q, &[n, d]).data, &floats(&c["dq"]), 1e-5);
        loss::enqueue(&mut bank, &mut ptr, &unit_keys, d);
        assert_eq!(ptr, c["ptr_after"].as_u64().unwrap() as usize, "pointer after call {i}");
        assert_close(&format!("queue after call {i}"), &bank, &floats(&c["bank_after"]), 1e-6);
    }
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::plugin::new_objective::<Moco>(RStr::from_str(json), &Context { seed: 7, ..Context::default() }).unwrap()
}

#[test]
fn gradients_through_the_projector_match_finite_differences() {
    // the checker writes every parameter, the queue included, before each evaluation, so the
    // queue each evaluation sees is the one of the first
    let mut obj = new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "queue_size": 12}"#);
    let v = vec![random(&[6, 5], 1), random(&[6, 5], 2)];
    let t = vec![random(&[6, 5], 3), random(&[6, 5], 4)];
    latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 4e-3, 1e-2);
}

#[test]
fn the_queue_is_state_in_buffers_and_moves_only_in_training() {
    let mut obj = new_box(r#"{"input_dim": 5, "hidden_dim": 8, "output_dim": 4, "queue_size": 10}"#);
    let roles: Vec<(String, ParamRole)> = obj.params().unwrap().iter().map(|d| (d.name.to_string(), d.role)).collect();
    assert_eq!(&roles[roles.len() - 2..], &[("queue".to_string(), ParamRole::Buffer), ("queue_ptr".to_string(), ParamRole::Buffer)]);
    let mut p = Moco::new(Config { input_dim: 5, hidden_dim: 8, output_dim: 4, queue_size: 10, ..Config::default() }, &Context::default()).unwrap();
    for row in p.queue.value.chunks(4) {
        assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5, "queued keys start as unit vectors");
    }
    let batch = |train: bool| ObjectiveBatch {
        views: vec![random(&[4, 5], 1), random(&[4, 5], 2)],
        targets: vec![random(&[4, 5], 3), random(&[4, 5], 4)],
        labels: vec![],
        step: 0,
        total_steps: 10,
        train,
    };
    let before = p.queue.value.clone();
    let r = p.compute(batch(false)).unwrap();
    assert_eq!((p.queue.value.clone(), p.queue_ptr.value[0]), (before.clone(), 0.0), "evaluation leaves the queue alone");
    assert_eq!(r.target_momentum, 0.99);
    let r = p.compute(batch(true)).unwrap();
    assert_eq!(p.queue_ptr.value[0], 4.0);
    assert_eq!(&p.queue.value[16..], &before[16..], "only the first 4 rows were written");
    assert_ne!(&p.queue.value[..16], &before[..16]);
    assert!(r.grads[1].data.iter().all(|&g| g == 0.0), "view 1 only gives keys: no gradient");
    assert!(r.grads[0].data.iter().any(|&g| g != 0.0));
    assert!((momentum(0.99, 5, 10) - 0.995).abs() < 1e-12 && momentum(0.99, 10, 10) == 1.0);
}

#[test]
fn bad_config_is_refused_by_name() {
    for (json, msg) in [
        (r#"{"queue_size": 0}"#, "queue_size"),
        (r#"{"temperature": 0}"#, "temperature"),
        (r#"{"momentum_base": 1.5}"#, "momentum_base"),
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"queue": 8}"#, "unknown field `queue`"),
    ] {
        let e = latent_sdk::plugin::new_objective::<Moco>(RStr::from_str(json), &Context::default()).err().expect("refused");
        assert!(e.to_string().contains(msg), "{json}: {e}");
    }
}
