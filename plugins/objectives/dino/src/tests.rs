//! Reference values (lightly 1.6.0 / torch, see fixtures/gen.py) and finite differences.

use super::*;
use latent_sdk::abi::{EpochInfo, ObjectiveBox, ObjectiveInput, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::testing::{assert_close, assert_scalar, floats, tensor};
use serde_json::Value;

const LOSS: &str = include_str!("../fixtures/loss.json");
const HEAD: &str = include_str!("../fixtures/head.json");

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("fixture key {k}"))
}

/// The loss of student logits against teacher logits with the plugin's functions, and its
/// gradients: (loss, d loss / d student).
fn loss_of(
    teacher: &[Tensor],
    student: &[Tensor],
    center: &[f32],
    temp: f64,
    student_temp: f64,
) -> (f64, Vec<Vec<f32>>) {
    let g = Graph::new(true);
    let s: Vec<Var> = student.iter().map(|t| g.input(t).unwrap()).collect();
    let k = center.len();
    let p: Vec<Vec<f32>> =
        teacher.iter().map(|t| loss::teacher_probs(&t.data, k, center, temp as f32)).collect();
    let l = loss::dino_loss(&s, &p, student_temp as f32);
    let mut gr = g.backward(&l).unwrap();
    (l.item(), s.iter().map(|v| gr.of(v)).collect())
}

#[test]
fn loss_centre_and_teacher_temperature_match_lightly() {
    let fx: Value = serde_json::from_str(LOSS).unwrap();
    let (b, k) = (num(&fx, "b") as usize, num(&fx, "k") as usize);
    let (w, t, we) = (
        num(&fx, "warmup_teacher_temp"),
        num(&fx, "teacher_temp"),
        num(&fx, "warmup_teacher_temp_epochs") as u64,
    );
    for c in fx["temps"].as_array().unwrap() {
        let e = c["epoch"].as_u64().unwrap();
        assert_scalar(
            &format!("teacher temperature at epoch {e}"),
            loss::teacher_temp(e, w, t, we),
            num(c, "temp"),
            1e-6,
        );
    }
    // three calls in a row: each uses the centre the previous one left
    let mut center = vec![0.0f32; k];
    for c in fx["calls"].as_array().unwrap() {
        let e = c["epoch"].as_u64().unwrap();
        assert_close(
            &format!("centre before the call at epoch {e}"),
            &center,
            &floats(&c["center_before"]),
            1e-6,
        );
        let teacher: Vec<Tensor> =
            c["teacher"].as_array().unwrap().iter().map(|v| tensor(v, b, k)).collect();
        let student: Vec<Tensor> =
            c["student"].as_array().unwrap().iter().map(|v| tensor(v, b, k)).collect();
        let (l, ds) = loss_of(
            &teacher,
            &student,
            &center,
            loss::teacher_temp(e, w, t, we),
            num(&fx, "student_temp"),
        );
        assert_scalar(&format!("loss at epoch {e}"), l, num(c, "loss"), 1e-5);
        for (i, (got, want)) in ds.iter().zip(c["dstudent"].as_array().unwrap()).enumerate() {
            assert_close(
                &format!("d loss / d student view {i} at epoch {e}"),
                got,
                &floats(want),
                1e-5,
            );
        }
        let parts: Vec<&[f32]> = teacher.iter().map(|t| t.data.as_slice()).collect();
        center = loss::updated_center(&center, &parts, num(&fx, "center_momentum") as f32);
        assert_close(
            &format!("centre after the call at epoch {e}"),
            &center,
            &floats(&c["center_after"]),
            1e-6,
        );
    }
    // one teacher view: its own student view is left out, the other counts alone
    let o = &fx["one_teacher"];
    let teacher: Vec<Tensor> =
        o["teacher"].as_array().unwrap().iter().map(|v| tensor(v, b, k)).collect();
    let student: Vec<Tensor> =
        o["student"].as_array().unwrap().iter().map(|v| tensor(v, b, k)).collect();
    let (l, ds) = loss_of(&teacher, &student, &vec![0.0; k], 0.04, 0.1);
    assert_scalar("loss with one teacher view", l, num(o, "loss"), 1e-5);
    assert!(ds[0].iter().all(|&g| g == 0.0), "student view 0 is paired with nothing");
    assert_close("d loss / d student view 1", &ds[1], &floats(&o["dstudent"][1]), 1e-5);
}

fn head_from(fx: &Value, h: &Value) -> DinoHead {
    let dim = |k: &str| fx[k].as_u64().unwrap() as usize;
    let mut head = DinoHead::new(
        &Init::new(0).pp("head"),
        dim("input_dim"),
        dim("hidden_dim"),
        dim("bottleneck_dim"),
        dim("output_dim"),
        h["batch_norm"].as_bool().unwrap(),
        h["norm_last_layer"].as_bool().unwrap(),
    );
    let mut loaded = 0;
    head.visit_params(&mut |p| {
        let key = p.name.strip_prefix("head.").unwrap();
        p.value = floats(&h["params"][key]).iter().map(|&x| x as f32).collect();
        loaded += 1;
    });
    assert_eq!(
        loaded,
        h["params"].as_object().unwrap().len(),
        "every tensor of lightly's state dict has a parameter of the same name"
    );
    head
}

#[test]
fn head_matches_lightly_dino_projection_head() {
    let fx: Value = serde_json::from_str(HEAD).unwrap();
    let (n, din, kk) =
        (num(&fx, "n") as usize, num(&fx, "input_dim") as usize, num(&fx, "output_dim") as usize);
    for h in fx["heads"].as_array().unwrap() {
        let what =
            format!("batch_norm {}, norm_last_layer {}", h["batch_norm"], h["norm_last_layer"]);
        let mut head = head_from(&fx, h);
        let g = Graph::new(true);
        let x = g.input(&tensor(&h["x"], n, din)).unwrap();
        let out = head.forward(&g, &x);
        assert_close(&format!("{what}: output"), &out.values(), &floats(&h["out"]), 1e-5);
        let r = g.from_vec(n, kk, floats(&h["r"]).iter().map(|&v| v as f32).collect());
        let mut gr = g.backward(&out.mul(&r).sum()).unwrap();
        assert_close(&format!("{what}: d / d x"), &gr.of(&x), &floats(&h["dx"]), 1e-5);
        gr.add_to_params(&mut head);
        let trainable: Vec<String> = floats_names(&h["trainable"]);
        head.visit_params(&mut |p| {
            let key = p.name.strip_prefix("head.").unwrap().to_string();
            assert_eq!(
                p.trainable(),
                trainable.contains(&key),
                "{what}: {key} is trained in lightly iff here"
            );
            if p.trainable() {
                assert_close(
                    &format!("{what}: grad of {key}"),
                    &p.grad,
                    &floats(&h["grads"][&key]),
                    1e-5,
                );
            }
        });
    }
}

fn floats_names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn new_box(json: &str) -> ObjectiveBox {
    latent_sdk::testing::objective::<Dino>(json, 7)
}

const SMALL: &str = r#"{"input_dim": 5, "hidden_dim": 8, "bottleneck_dim": 4, "output_dim": 6}"#;

fn input(views: Vec<Tensor>, targets: Vec<Tensor>) -> ObjectiveInput {
    ObjectiveInput {
        views: views.into_iter().map(Tensor::into_desc).collect(),
        targets: targets.into_iter().map(Tensor::into_desc).collect(),
        labels: Default::default(),
        step: 0,
        total_steps: 10,
        train: true,
    }
}

fn epoch(e: u64) -> EpochInfo {
    EpochInfo { epoch: e, epochs: 10, steps_per_epoch: 5 }
}

#[test]
fn freeze_last_layer_leaves_the_last_layer_without_update_for_its_epochs_as_lightly() {
    let fx: Value = serde_json::from_str(HEAD).unwrap();
    let kept = &fx["heads"][0]["with_grad_after_cancel"];
    let mut obj = new_box(SMALL);
    let names: Vec<String> = obj.params().unwrap().iter().map(|d| d.name.to_string()).collect();
    for e in [0u64, 1] {
        obj.begin_epoch(epoch(e)).unwrap();
        obj.compute(input(
            vec![random(&[4, 5], 1), random(&[4, 5], 2)],
            vec![random(&[4, 5], 3), random(&[4, 5], 4)],
        ))
        .unwrap();
        let grads = obj.take_grads().unwrap();
        let with_grad: Vec<String> = names
            .iter()
            .zip(&grads)
            .filter(|(n, g)| n.starts_with("head.") && !g.data.is_empty())
            .map(|(n, _)| n["head.".len()..].to_string())
            .collect();
        let mut want = floats_names(&kept[e.to_string()]);
        want.sort();
        let mut got = with_grad.clone();
        got.sort();
        assert_eq!(got, want, "epoch {e}: parameters with a gradient (freeze_last_layer = 1)");
    }
}

#[test]
fn gradients_match_finite_differences_with_global_and_local_views() {
    // epoch 1: the last layer is trained, so it is checked too; g trained in the second case
    for json in [
        SMALL,
        r#"{"input_dim": 5, "hidden_dim": 8, "bottleneck_dim": 4, "output_dim": 6, "norm_last_layer": false, "batch_norm": true}"#,
    ] {
        for (views, teachers) in [(2usize, 2usize), (4, 2), (3, 1)] {
            let mut obj = new_box(json);
            obj.begin_epoch(epoch(1)).unwrap();
            // trained-looking weights: at the init's σ 0.02 the bottleneck is tiny, its L2
            // normalisation bends sharply, and a central difference of step 1e-2 is no derivative
            let descs = obj.params().unwrap();
            let mut vals = obj.read_params().unwrap();
            for (i, (d, v)) in descs.iter().zip(vals.iter_mut()).enumerate() {
                if d.name.starts_with("head.layers.") {
                    let r = random(&[v.data.len()], 100 + i as u64);
                    v.data = r.data.iter().map(|x| 0.5 * x).collect::<Vec<f32>>().into();
                }
            }
            obj.write_params(vals).unwrap();
            let v: Vec<Tensor> = (0..views).map(|i| random(&[4, 5], 10 + i as u64)).collect();
            let t: Vec<Tensor> = (0..teachers).map(|i| random(&[4, 5], 20 + i as u64)).collect();
            latent_sdk::check::assert_objective_gradients(&mut obj, v, t, vec![], 1e-2, 2e-2);
        }
    }
}

#[test]
fn the_centre_is_a_checkpointed_buffer_that_moves_each_training_step() {
    let mut obj = new_box(SMALL);
    let descs = obj.params().unwrap();
    let i = descs.iter().position(|d| d.name.as_str() == "center").expect("a parameter `center`");
    assert_eq!(descs[i].role, ParamRole::Buffer);
    let start = obj.read_params().unwrap();
    let batch = || {
        input(
            vec![random(&[4, 5], 1), random(&[4, 5], 2)],
            vec![random(&[4, 5], 3), random(&[4, 5], 4)],
        )
    };
    let first = obj.compute(batch()).unwrap().loss;
    let moved = obj.read_params().unwrap();
    assert_ne!(moved[i].data, start[i].data, "the centre moved");
    let second = obj.compute(batch()).unwrap().loss;
    assert_ne!(first.to_bits(), second.to_bits(), "the second step used the moved centre");
    // restoring it (as --resume does) gives the second step's loss bit for bit
    obj.write_params(moved).unwrap();
    assert_eq!(obj.compute(batch()).unwrap().loss.to_bits(), second.to_bits());
    // evaluation leaves it alone
    let before = obj.read_params().unwrap()[i].clone();
    obj.compute(ObjectiveInput { train: false, ..batch() }).unwrap();
    assert_eq!(obj.read_params().unwrap()[i], before);
}

#[test]
fn teacher_parameters_follow_the_student_head() {
    let mut obj = new_box(SMALL);
    let descs = obj.params().unwrap();
    for d in &descs {
        let name = d.name.as_str();
        if let Some(leaf) = name.strip_prefix("teacher_head.") {
            let online = format!("head.{leaf}");
            assert!(descs.iter().any(|e| e.name.as_str() == online), "{name} has an online twin");
            if leaf == "last_layer.weight_g" {
                assert_eq!(d.role, ParamRole::Buffer, "norm_last_layer fixes g on both sides");
            } else {
                assert_eq!(
                    (d.role, d.ema_of.as_ref().map(|s| s.to_string()).into_option()),
                    (ParamRole::Target, Some(online))
                );
            }
        }
    }
    assert_eq!(
        descs.iter().filter(|d| d.name.starts_with("teacher_head.")).count(),
        descs.iter().filter(|d| d.name.starts_with("head.")).count()
    );
}

#[test]
fn metrics_report_entropy_and_kl_and_raise_the_uniform_alarm_on_a_uniform_teacher() {
    let mut p = Dino::new(serde_json::from_str(SMALL).unwrap(), &Context::default()).unwrap();
    let batch = |views: Vec<Tensor>, targets: Vec<Tensor>| ObjectiveBatch {
        views,
        targets,
        labels: vec![],
        step: 0,
        total_steps: 10,
        train: true,
    };
    let m = |r: &ObjectiveResult, k: &str| {
        r.metrics.iter().find(|x| x.0 == k).unwrap_or_else(|| panic!("metric {k}")).1
    };
    let ln_k = 6f64.ln();
    let r = p
        .compute(batch(
            vec![random(&[4, 5], 1), random(&[4, 5], 2)],
            vec![random(&[4, 5], 3), random(&[4, 5], 4)],
        ))
        .unwrap();
    let (h, kl) = (m(&r, "teacher_entropy"), m(&r, "kl"));
    assert!(h > 0.0 && h < ln_k, "entropy {h} in (0, ln K)");
    assert!(kl >= -1e-6, "KL {kl} >= 0");
    assert_scalar("kl = loss - entropy", kl, r.loss as f64 - h, 1e-5);
    assert_eq!(m(&r, "alarm_uniform"), 0.0);
    assert_eq!(m(&r, "teacher_temp"), 0.04);
    // zero features: the MLP gives its zero biases, the normalised bottleneck is 0, every
    // logit 0: teacher and student uniform, the loss ln K (a fresh objective: centre 0)
    let mut p = Dino::new(serde_json::from_str(SMALL).unwrap(), &Context::default()).unwrap();
    let zero = || Tensor::new(vec![4, 5], vec![0.0; 20]);
    let r = p.compute(batch(vec![zero(), zero()], vec![zero(), zero()])).unwrap();
    assert_scalar("loss of a uniform teacher and student", r.loss as f64, ln_k, 1e-5);
    assert_eq!(m(&r, "alarm_uniform"), 1.0);
}

#[test]
fn head_weights_start_truncated_normal_with_zero_biases() {
    let mut h = DinoHead::new(&Init::new(1).pp("head"), 64, 256, 32, 100, false, true);
    h.visit_params(&mut |p| {
        if p.name.starts_with("head.layers.") && p.name.ends_with(".weight") {
            let n = p.value.len() as f64;
            let std = (p.value.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt();
            assert!((std - 0.02).abs() < 0.002, "{}: std {std}", p.name);
        }
        if p.name.ends_with(".bias") {
            assert!(p.value.iter().all(|&b| b == 0.0), "{} starts at zero", p.name);
        }
        if p.name.ends_with("weight_g") {
            assert!(p.value.iter().all(|&g| g == 1.0), "{} starts at one", p.name);
        }
    });
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    latent_sdk::testing::assert_refused::<Dino>(&[
        (r#"{"output_dim": 0}"#, "output_dim"),
        (r#"{"hidden_dim": 0}"#, "hidden_dim"),
        (r#"{"output_dim": 1}"#, "output_dim"),
        (r#"{"student_temp": 0}"#, "student_temp"),
        (r#"{"teacher_temp": -0.04}"#, "teacher_temp"),
        (r#"{"warmup_teacher_temp": 0}"#, "warmup_teacher_temp"),
        (r#"{"center_momentum": 1.0}"#, "center_momentum"),
        (r#"{"momentum_base": 1.5}"#, "momentum_base"),
        (r#"{"teacher_temperature": 0.04}"#, "teacher_temperature"),
    ]);
    // views and targets the method cannot use
    let mut obj = new_box(SMALL);
    let e = obj
        .compute(input(vec![random(&[4, 5], 1)], vec![random(&[4, 5], 1)]))
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("at least 2 views"), "{e}");
    let e = obj
        .compute(input(vec![random(&[4, 5], 1), random(&[4, 5], 2)], vec![]))
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("teacher"), "{e}");
    let e = obj
        .compute(input(vec![random(&[4, 5], 1), random(&[4, 3], 2)], vec![random(&[4, 5], 1)]))
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("view 1 has 3 features"), "{e}");
}
