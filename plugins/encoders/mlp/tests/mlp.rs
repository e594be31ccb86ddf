//! The `mlp` plugin through its ABI wrapper.

use abi_stable::std_types::RVec;
use latent_plugin_mlp::Mlp;
use latent_sdk::abi::{Context, EncoderBox, ParamRole};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::kit::Tensor;
use latent_sdk::plugin::new_encoder;

fn encoder(config: &str) -> EncoderBox {
    let ctx = Context { seed: 3, ..Context::default() };
    new_encoder::<Mlp>(config.into(), &ctx).into_result().unwrap_or_else(|e| panic!("{e}"))
}

fn forward(enc: &mut EncoderBox, x: &Tensor, train: bool) -> Tensor {
    Tensor::from_desc(enc.forward(x.clone().into_desc(), train).into_result().unwrap()).unwrap()
}

#[test]
fn default_mlp_builds_on_out_dim_with_named_parameters() {
    let mut enc = encoder("");
    assert_eq!(
        enc.params().into_result().unwrap().len(),
        0,
        "no layers before the input size is known"
    );
    assert_eq!(enc.out_dim(RVec::from(vec![1, 28, 28])).into_result().unwrap(), 128);
    let ps = enc.params().into_result().unwrap();
    let names: Vec<String> = ps.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "hidden.0.linear.weight",
            "hidden.0.bn.weight",
            "hidden.0.bn.bias",
            "hidden.0.bn.running_mean",
            "hidden.0.bn.running_var",
            "out.weight",
            "out.bias"
        ]
    );
    let trainable: u64 = ps
        .iter()
        .filter(|p| p.role != ParamRole::Buffer)
        .map(|p| p.shape.iter().product::<u64>())
        .sum();
    assert_eq!(trainable, 784 * 256 + 2 * 256 + 256 * 128 + 128);
    let e = enc.out_dim(RVec::from(vec![3, 28, 28])).into_result().unwrap_err();
    assert!(e.to_string().contains("built for images of 784 values, got 2352"), "{e}");
}

#[test]
fn forward_backward_and_finite_differences() {
    let mut enc = encoder(r#"{"hidden": [6, 5], "out_dim": 3}"#);
    assert_eq!(enc.out_dim(RVec::from(vec![2, 2, 3])).into_result().unwrap(), 3);
    let x = random(&[4, 2, 2, 3], 1);
    let r = random(&[4, 3], 2);
    assert_eq!(forward(&mut enc, &x, true).shape, vec![4, 3]);
    enc.backward(r.clone().into_desc()).into_result().unwrap();
    let grads = enc.take_grads().into_result().unwrap().into_vec();
    let values = enc.read_params().into_result().unwrap().into_vec();
    let loss = |enc: &mut EncoderBox| -> f64 {
        forward(enc, &x, true).data.iter().zip(&r.data).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let h = 1e-3f32;
    for (pi, j) in [(0, 0), (0, 7), (1, 2), (2, 4), (5, 3), (6, 1), (7, 4), (10, 5), (11, 2)] {
        let at = |d: f32, enc: &mut EncoderBox| {
            let mut v = values.clone();
            v[pi].data[j] += d;
            enc.write_params(v.into()).into_result().unwrap();
            loss(enc)
        };
        let num = (at(h, &mut enc) - at(-h, &mut enc)) / (2.0 * h as f64);
        let ana = grads[pi].data[j] as f64;
        assert!(
            (num - ana).abs() <= 2e-2 * num.abs().max(ana.abs()).max(0.1),
            "param {pi}[{j}]: analytic {ana} numeric {num}"
        );
    }
}

#[test]
fn without_batch_norm_and_built_on_first_forward() {
    let mut enc = encoder(r#"{"hidden": [4], "out_dim": 2, "batch_norm": false}"#);
    let y = forward(&mut enc, &random(&[1, 1, 3, 3], 1), true);
    assert_eq!(y.shape, vec![1, 2]);
    enc.backward(random(&[1, 2], 2).into_desc()).into_result().unwrap();
    let names: Vec<String> =
        enc.params().into_result().unwrap().iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["hidden.0.linear.weight", "hidden.0.linear.bias", "out.weight", "out.bias"]);
}

#[test]
fn unknown_config_key_is_refused_by_name() {
    let e = new_encoder::<Mlp>(r#"{"hiden": [3]}"#.into(), &Context::default())
        .into_result()
        .err()
        .unwrap();
    assert!(e.to_string().contains("unknown field `hiden`"), "{e}");
}
