//! The `resnet` plugin through its ABI wrapper: shapes, parameter counts and names, a
//! finite-difference check of parameter gradients, config errors.

use abi_stable::std_types::RVec;
use latent_plugin_resnet::ResNet;
use latent_sdk::abi::{Context, EncoderBox, ParamRole, TensorDesc};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::kit::Tensor;
use latent_sdk::plugin::new_encoder;

fn encoder(config: &str) -> EncoderBox {
    let ctx = Context { seed: 7, ..Context::default() };
    new_encoder::<ResNet>(config.into(), &ctx).into_result().unwrap_or_else(|e| panic!("{e}"))
}

/// (trainable count, all names and roles) read through the ABI.
fn params(enc: &mut EncoderBox) -> (usize, Vec<(String, ParamRole, Vec<u64>)>) {
    let ps = enc.params().into_result().unwrap();
    let n = ps
        .iter()
        .filter(|p| matches!(p.role, ParamRole::Weight | ParamRole::NoDecay))
        .map(|p| p.shape.iter().product::<u64>() as usize)
        .sum();
    (n, ps.iter().map(|p| (p.name.to_string(), p.role, p.shape.to_vec())).collect())
}

fn forward(enc: &mut EncoderBox, x: &Tensor, train: bool) -> Tensor {
    Tensor::from_desc(enc.forward(x.clone().into_desc(), train).into_result().unwrap()).unwrap()
}

#[test]
fn resnet_mini_has_306784_parameters_and_pytorch_names() {
    let mut enc = encoder("");
    assert_eq!(enc.out_dim(RVec::from(vec![1, 28, 28])).into_result().unwrap(), 128);
    let (n, names) = params(&mut enc);
    assert_eq!(n, 306_784);
    let find = |name: &str| {
        names.iter().find(|p| p.0 == name).unwrap_or_else(|| panic!("no parameter {name}"))
    };
    assert_eq!(names[0].0, "stem.conv.weight");
    assert_eq!(find("stem.conv.weight").2, vec![32, 1, 3, 3]);
    assert_eq!(find("stage1.0.conv1.weight").1, ParamRole::Weight);
    assert_eq!(find("stage1.0.bn1.weight").1, ParamRole::NoDecay);
    assert_eq!(find("stage1.0.bn1.running_mean").1, ParamRole::Buffer);
    assert_eq!(find("stage2.0.shortcut.conv.weight").2, vec![64, 32, 1, 1]);
    assert_eq!(find("stage3.0.shortcut.bn.running_var").2, vec![128]);
    assert!(
        !names.iter().any(|p| p.0.starts_with("stage1.0.shortcut")),
        "stage 1 keeps the identity shortcut"
    );
}

#[test]
fn resnet18_cifar_has_11168832_parameters() {
    let mut enc = encoder(r#"{"preset": "resnet18-cifar", "in_channels": 3}"#);
    assert_eq!(enc.out_dim(RVec::from(vec![3, 32, 32])).into_result().unwrap(), 512);
    let (n, names) = params(&mut enc);
    assert_eq!(n, 11_168_832);
    assert!(names.iter().any(|p| p.0 == "stage4.1.bn2.running_var"));
    assert!(names.iter().any(|p| p.0 == "stage4.0.shortcut.conv.weight"));
    // one small forward in eval mode: shape only (the full model is too slow for a unit test at size)
    let y = forward(&mut enc, &random(&[2, 3, 8, 8], 1), false);
    assert_eq!(y.shape, vec![2, 512]);
}

#[test]
fn forward_and_backward_through_the_abi() {
    let mut enc = encoder(r#"{"in_channels": 1}"#);
    assert_eq!(enc.out_dim(RVec::from(vec![1, 28, 28])).into_result().unwrap(), 128);
    let x = random(&[4, 1, 28, 28], 3);
    let y = forward(&mut enc, &x, true);
    assert_eq!(y.shape, vec![4, 128]);
    assert!(
        y.data.iter().all(|v| v.is_finite() && *v >= 0.0),
        "features are averages of ReLU outputs"
    );
    enc.backward(random(&[4, 128], 4).into_desc()).into_result().unwrap();
    let grads: Vec<TensorDesc> = enc.take_grads().into_result().unwrap().into_vec();
    let ps = enc.params().into_result().unwrap();
    assert_eq!(grads.len(), ps.len());
    let nonzero =
        grads.iter().zip(ps.iter()).filter(|(g, _)| g.data.iter().any(|v| *v != 0.0)).count();
    let trainable = ps.iter().filter(|p| p.role != ParamRole::Buffer).count();
    assert_eq!(nonzero, trainable, "every trainable parameter gets a gradient");
    // a second backward without forward is refused, not a panic
    let e = enc.backward(random(&[4, 128], 4).into_desc()).into_result().unwrap_err();
    assert!(e.to_string().contains("without a training forward"), "{e}");
    // non-square images and an odd size work too
    assert_eq!(forward(&mut enc, &random(&[2, 1, 13, 9], 5), true).shape, vec![2, 128]);
    // images of the wrong channel count get a clear error
    let e = enc.out_dim(RVec::from(vec![3, 28, 28])).into_result().unwrap_err();
    assert!(e.to_string().contains("in_channels = 1 but the images have 3 channels"), "{e}");
    let e = enc.forward(random(&[2, 3, 8, 8], 1).into_desc(), true).into_result().unwrap_err();
    assert!(e.to_string().contains("in_channels = 1"), "{e}");
}

#[test]
fn gradients_of_a_tiny_resnet_match_finite_differences() {
    let cfg = r#"{"preset": "custom", "in_channels": 2, "stem_width": 3, "widths": [3, 4], "blocks": [1, 1]}"#;
    tiny_resnet_gradients(cfg, 3);
}

/// Slices of 4 images: with 2 or 3 images a slice, the ReLU kinks after such tiny batch-norm
/// batches sit too close for f32 central differences, grouped or not (the ungrouped check
/// fails the same way at 2 images); that the grouped gradients are exactly those of separate
/// passes is `grouped_gradients_are_the_sum_of_separate_passes`.
#[test]
fn gradients_with_batch_norm_per_slice_match_finite_differences() {
    let cfg = r#"{"preset": "custom", "in_channels": 2, "stem_width": 3, "widths": [3, 4], "blocks": [1, 1], "bn_groups": 2}"#;
    tiny_resnet_gradients(cfg, 8);
}

/// Parameter gradients of `L = Σ features ⊙ r` through the ABI against central differences,
/// on a batch of `n` 2x5x6 images.
fn tiny_resnet_gradients(cfg: &str, n: usize) {
    let mut enc = encoder(cfg);
    assert_eq!(enc.out_dim(RVec::from(vec![2, 5, 6])).into_result().unwrap(), 4);
    let x = random(&[n, 2, 5, 6], 11);
    let r = random(&[n, 4], 12);
    // L = Σ features ⊙ r, in f64
    let loss = |enc: &mut EncoderBox| -> f64 {
        let y = forward(enc, &x, true);
        y.data.iter().zip(&r.data).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    forward(&mut enc, &x, true);
    enc.backward(r.clone().into_desc()).into_result().unwrap();
    let grads = enc.take_grads().into_result().unwrap().into_vec();
    let names: Vec<String> =
        enc.params().into_result().unwrap().iter().map(|p| p.name.to_string()).collect();
    let values: Vec<TensorDesc> = enc.read_params().into_result().unwrap().into_vec();
    let checks = [
        ("stem.conv.weight", 0),
        ("stem.conv.weight", 17),
        ("stem.bn.weight", 1),
        ("stage1.0.conv1.weight", 5),
        ("stage1.0.bn2.bias", 2),
        ("stage2.0.conv2.weight", 30),
        ("stage2.0.shortcut.conv.weight", 3),
        ("stage2.0.shortcut.bn.weight", 0),
    ];
    // ReLUs after batch norm of tiny batches put kinks close to the evaluation point: the step
    // must be small (at 1e-3 some checks are off by 10%; at 1e-4 the f32 noise is ~0.1%)
    let h = 1e-4f32;
    for (name, j) in checks {
        let pi = names.iter().position(|n| n == name).unwrap();
        let at = |delta: f32, enc: &mut EncoderBox| {
            let mut v = values.clone();
            v[pi].data[j] += delta;
            enc.write_params(v.into()).into_result().unwrap();
            loss(enc)
        };
        let num = (at(h, &mut enc) - at(-h, &mut enc)) / (2.0 * h as f64);
        let ana = grads[pi].data[j] as f64;
        assert!(
            (num - ana).abs() <= 2e-2 * num.abs().max(ana.abs()).max(0.1),
            "{name}[{j}]: analytic {ana} numeric {num}"
        );
    }
}

#[test]
fn config_errors_name_the_problem() {
    let ctx = Context::default();
    let err = |cfg: &str| {
        new_encoder::<ResNet>(cfg.into(), &ctx).into_result().err().expect("refused").to_string()
    };
    let e = err(r#"{"preset": "resnet-mini", "with": 3}"#);
    assert!(e.contains("unknown field `with`"), "{e}");
    let e = err(r#"{"preset": "resnet50"}"#);
    assert!(e.contains("preset must be one of"), "{e}");
    let e = err(r#"{"preset": "custom", "widths": [8, 16], "blocks": [1]}"#);
    assert!(e.contains("widths has 2 stages but blocks has 1"), "{e}");
    let e = err(r#"{"preset": "resnet-mini", "widths": [8]}"#);
    assert!(e.contains("`widths` applies only to preset custom"), "{e}");
}

#[test]
fn custom_preset_with_stem_pool_and_thread_pool() {
    let ctx = Context { seed: 1, threads: 1, ..Context::default() };
    let cfg = r#"{"preset": "custom", "in_channels": 3, "widths": [4, 8, 8], "blocks": [1, 2, 1], "stem_pool": true}"#;
    let mut enc = new_encoder::<ResNet>(cfg.into(), &ctx).into_result().unwrap();
    assert_eq!(enc.out_dim(RVec::from(vec![3, 16, 12])).into_result().unwrap(), 8);
    let y = forward(&mut enc, &random(&[2, 3, 16, 12], 2), true);
    assert_eq!(y.shape, vec![2, 8]);
    enc.backward(random(&[2, 8], 3).into_desc()).into_result().unwrap();
    // the same seed gives the same parameters
    let a = encoder(r#"{"preset": "resnet-mini"}"#).read_params().into_result().unwrap();
    let b = encoder(r#"{"preset": "resnet-mini"}"#).read_params().into_result().unwrap();
    assert_eq!(a[0].data, b[0].data);
}

/// `bn_groups = 2` is two encoder passes, one per half of the batch: the features of the
/// grouped pass over [a; b] are those of passes over a and over b; a batch that does not split
/// is refused, and a zero is a config error.
#[test]
fn bn_groups_are_one_pass_per_slice() {
    let cfg = r#"{"preset": "custom", "in_channels": 1, "widths": [4, 8], "blocks": [1, 1]}"#;
    let grouped_cfg = r#"{"preset": "custom", "in_channels": 1, "widths": [4, 8], "blocks": [1, 1], "bn_groups": 2}"#;
    let (mut one, mut grouped) = (encoder(cfg), encoder(grouped_cfg));
    let x = random(&[8, 1, 6, 6], 3);
    let half = |k: usize| Tensor::new(vec![4, 1, 6, 6], x.data[k * 144..(k + 1) * 144].to_vec());
    let y = forward(&mut grouped, &x, true);
    let mut want = forward(&mut one, &half(0), true).data;
    want.extend(forward(&mut one, &half(1), true).data);
    for (a, b) in y.data.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let joint = forward(&mut one, &x, true);
    assert!(joint.data.iter().zip(&y.data).any(|(a, b)| (a - b).abs() > 1e-3));
    let err =
        grouped.forward(random(&[7, 1, 6, 6], 4).into_desc(), true).into_result().unwrap_err();
    assert!(err.to_string().contains("bn_groups = 2"), "{err}");
    let ctx = Context::default();
    let e = new_encoder::<ResNet>(r#"{"bn_groups": 0}"#.into(), &ctx)
        .into_result()
        .err()
        .expect("refused");
    assert!(e.to_string().contains("bn_groups must be at least 1"), "{e}");
}

/// The parameter gradients of one grouped pass over [a; b] are the sums of those of two
/// ungrouped passes, over a and over b.
#[test]
fn grouped_gradients_are_the_sum_of_separate_passes() {
    let cfg = r#"{"preset": "custom", "in_channels": 2, "stem_width": 3, "widths": [3, 4], "blocks": [1, 1]}"#;
    let gcfg = r#"{"preset": "custom", "in_channels": 2, "stem_width": 3, "widths": [3, 4], "blocks": [1, 1], "bn_groups": 2}"#;
    let (mut one, mut grouped) = (encoder(cfg), encoder(gcfg));
    let n = 4;
    let x = random(&[n, 2, 5, 6], 11);
    let r = random(&[n, 4], 12);
    forward(&mut grouped, &x, true);
    grouped.backward(r.clone().into_desc()).into_result().unwrap();
    let gg = grouped.take_grads().into_result().unwrap().into_vec();
    let sz = 2 * 5 * 6;
    let mut acc: Option<Vec<TensorDesc>> = None;
    for k in 0..2 {
        let xh = Tensor::new(vec![2, 2, 5, 6], x.data[k * 2 * sz..(k + 1) * 2 * sz].to_vec());
        let rh = Tensor::new(vec![2, 4], r.data[k * 8..(k + 1) * 8].to_vec());
        forward(&mut one, &xh, true);
        one.backward(rh.into_desc()).into_result().unwrap();
        let g = one.take_grads().into_result().unwrap().into_vec();
        acc = Some(match acc {
            None => g,
            Some(mut a) => {
                for (u, v) in a.iter_mut().zip(&g) {
                    for (p, q) in u.data.iter_mut().zip(v.data.iter()) {
                        *p += q;
                    }
                }
                a
            }
        });
    }
    let names: Vec<String> =
        one.params().into_result().unwrap().iter().map(|p| p.name.to_string()).collect();
    for ((a, b), nm) in gg.iter().zip(acc.unwrap().iter()).zip(&names) {
        for (p, q) in a.data.iter().zip(b.data.iter()) {
            assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "{nm}: {p} vs {q}");
        }
    }
}
