//! Every operation and layer against finite differences, and the dfdx traps the SDK absorbs.

use super::gradcheck::{assert_within, check, check_fn};
use super::nn::{BatchNorm1d, BatchNorm2d, Conv2d, Head, Linear};
use super::ops::{cat_rows, conv2d, cross_entropy, global_avg_pool, max_pool2d};
use super::{catch_op_errors, Graph, Var};
use crate::kit::gradcheck::random;
use crate::kit::{BatchNorm, Init, Layer, Linear as KitLinear, Module, Relu, Sequential, Tensor};

/// `Σ y ⊙ r` for a fixed random `r` of `y`'s shape: every entry of `y` gets a distinct weight.
/// A unary operation on the tape, as the tables of cases below list them.
type VarFn = fn(&Var) -> Var;

fn weigh(y: &Var, seed: u64) -> Var {
    let (r, c) = y.dims();
    let w = y.graph().from_vec(r, c, random(&[r, c], seed).data);
    (y * &w).sum()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    let mut t = random(shape, seed);
    t.data.iter_mut().for_each(|v| *v = 0.5 + v.abs());
    t
}

#[test]
fn elementwise_ops_and_broadcasts_match_finite_differences() {
    let x = random(&[3, 4], 1);
    for (name, other) in [
        ("full", random(&[3, 4], 2)),
        ("row", random(&[1, 4], 3)),
        ("column", random(&[3, 1], 4)),
        ("scalar", random(&[1, 1], 5)),
    ] {
        let other_pos = positive(&other.shape, 6);
        assert_within(
            &format!("add {name}"),
            &check_fn(&[x.clone(), other.clone()], 1e-2, |_, v| weigh(&(&v[0] + &v[1]), 9)),
            1e-2,
        );
        assert_within(
            &format!("sub {name}"),
            &check_fn(&[x.clone(), other.clone()], 1e-2, |_, v| weigh(&(&v[0] - &v[1]), 9)),
            1e-2,
        );
        assert_within(
            &format!("mul {name}"),
            &check_fn(&[x.clone(), other.clone()], 1e-2, |_, v| weigh(&(&v[0] * &v[1]), 9)),
            1e-2,
        );
        assert_within(
            &format!("div {name}"),
            &check_fn(&[x.clone(), other_pos], 1e-3, |_, v| weigh(&(&v[0] / &v[1]), 9)),
            1e-2,
        );
        // the broadcast operand on the left
        assert_within(
            &format!("sub {name} left"),
            &check_fn(&[other.clone(), x.clone()], 1e-2, |_, v| weigh(&(&v[0] - &v[1]), 9)),
            1e-2,
        );
    }
    let p = positive(&[3, 4], 7);
    let unary: [(&str, &Tensor, VarFn); 9] = [
        ("exp", &x, |v| v.exp()),
        ("ln", &p, |v| v.ln()),
        ("sqrt", &p, |v| v.sqrt()),
        ("square", &x, |v| v.square()),
        ("gelu", &x, |v| v.gelu()),
        ("relu", &p, |v| v.relu()),
        ("powf", &p, |v| v.powf(1.5)),
        ("scalar ops", &x, |v| -((v * 3.0 + 1.0) / 2.0 - 0.5)),
        ("clamp_min", &p, |v| v.clamp_min(0.1)),
    ];
    for (name, input, f) in unary {
        assert_within(
            name,
            &check_fn(std::slice::from_ref(input), 1e-3, |_, v| weigh(&f(&v[0]), 9)),
            1e-2,
        );
    }
}

#[test]
fn reductions_and_softmax_match_finite_differences() {
    let x = random(&[4, 5], 1);
    let red: [(&str, VarFn); 8] = [
        ("sum", |v| v.sum()),
        ("mean", |v| v.mean().scale(7.0)),
        ("sum_rows", |v| weigh(&v.sum_rows(), 3)),
        ("mean_rows", |v| weigh(&v.mean_rows(), 3)),
        ("sum_cols", |v| weigh(&v.sum_cols(), 3)),
        ("var_cols", |v| weigh(&v.var_cols(), 3)),
        ("logsumexp_rows", |v| weigh(&v.logsumexp_rows(), 3)),
        ("log_softmax_rows", |v| weigh(&v.log_softmax_rows(), 3)),
    ];
    for (name, f) in red {
        assert_within(name, &check_fn(std::slice::from_ref(&x), 1e-2, |_, v| f(&v[0])), 1e-2);
    }
    let mask: Vec<bool> = (0..20).map(|k| k % 6 == 0).collect();
    let m2 = mask.clone();
    assert_within(
        "masked log-softmax",
        &check_fn(std::slice::from_ref(&x), 1e-2, move |_, v| {
            let y = v[0].log_softmax_rows_masked(&m2);
            weigh(&y.masked_fill(&m2, 0.0), 3)
        }),
        1e-2,
    );
    // the masked entries are out of the sum: each row's softmax over the others sums to 1
    let g = Graph::new(false);
    let y = g.input(&x).unwrap().log_softmax_rows_masked(&mask).values();
    for i in 0..4 {
        let s: f32 = (0..5).filter(|&j| !mask[i * 5 + j]).map(|j| y[i * 5 + j].exp()).sum();
        assert!((s - 1.0).abs() < 1e-5, "row {i} sums to {s}");
    }
    let targets = [1usize, 0, 4, 2];
    assert_within(
        "cross_entropy",
        &check_fn(std::slice::from_ref(&x), 1e-2, move |_, v| cross_entropy(&v[0], &targets)),
        1e-2,
    );
}

#[test]
fn gelu_matches_its_erf_formula() {
    // x·Φ(x) and Φ(x) + x·φ(x) in f64 (Python's math.erf) at x = -2, -1, -0.3, 0, 0.5, 1.7
    let x = [-2.0f32, -1.0, -0.3, 0.0, 0.5, 1.7];
    let y = [-0.04550026f32, -0.15865525, -0.11462657, 0.0, 0.34573123, 1.624_238_7];
    let g = Graph::new(true);
    let v = g.from_vec(1, 6, x.to_vec());
    let out = v.gelu();
    for (a, b) in out.values().iter().zip(&y) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let d = g.backward(&out.sum()).unwrap().of(&v);
    let want = [-0.085_231_8_f32, -0.08331547, 0.26767223, 0.5, 0.867_495_1, 1.115_318];
    for (a, b) in d.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "gelu' {a} vs {b}");
    }
}

#[test]
fn cross_entropy_matches_its_formula() {
    let x = random(&[3, 4], 2);
    let g = Graph::new(false);
    let l = cross_entropy(&g.input(&x).unwrap(), &[3, 0, 1]).item();
    let mut want = 0.0f64;
    for (i, &t) in [3usize, 0, 1].iter().enumerate() {
        let row: Vec<f64> = x.data[i * 4..i * 4 + 4].iter().map(|&v| v as f64).collect();
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        want += lse - row[t];
    }
    assert!((l - want / 3.0).abs() < 1e-6, "{l} vs {}", want / 3.0);
}

#[test]
fn matrix_ops_and_row_helpers_match_finite_differences() {
    let a = random(&[3, 4], 1);
    let b = random(&[4, 2], 2);
    let c = random(&[5, 4], 3);
    assert_within(
        "matmul",
        &check_fn(&[a.clone(), b.clone()], 1e-2, |_, v| weigh(&v[0].matmul(&v[1]), 9)),
        1e-2,
    );
    assert_within(
        "matmul_t",
        &check_fn(&[a.clone(), c.clone()], 1e-2, |_, v| weigh(&v[0].matmul_t(&v[1]), 9)),
        1e-2,
    );
    assert_within("t", &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].t(), 9)), 1e-2);
    assert_within(
        "matmul_t of a tensor with itself",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].matmul_t(&v[0]), 9)),
        1e-2,
    );
    // wide enough for gemm's blocked path, with the weight a strided view
    let (x, w) = (random(&[16, 160], 6), random(&[24, 160], 7));
    assert_within(
        "matmul_t [16, 160] · [24, 160]ᵀ",
        &check_fn(&[x, w], 1e-2, |_, v| weigh(&v[0].matmul_t(&v[1]), 9)),
        2e-2,
    );
    assert_within(
        "l2_normalize",
        &check_fn(std::slice::from_ref(&a), 1e-3, |_, v| weigh(&v[0].l2_normalize(), 9)),
        1e-2,
    );
    assert_within(
        "cosine_rows",
        &check_fn(&[a.clone(), random(&[3, 4], 5)], 1e-3, |_, v| {
            weigh(&v[0].cosine_rows(&v[1]), 9)
        }),
        1e-2,
    );
    assert_within(
        "cosine_matrix",
        &check_fn(&[a.clone(), c.clone()], 1e-3, |_, v| weigh(&v[0].cosine_matrix(&v[1]), 9)),
        1e-2,
    );
    assert_within(
        "rows_range",
        &check_fn(std::slice::from_ref(&c), 1e-2, |_, v| weigh(&v[0].rows_range(1, 4), 9)),
        1e-2,
    );
    assert_within(
        "cat_rows",
        &check_fn(&[a.clone(), c.clone()], 1e-2, |_, v| {
            weigh(&cat_rows(&[&v[1], &v[0], &v[1]]), 9)
        }),
        1e-2,
    );
    assert_within(
        "pick",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].pick(&[3, 0, 3]), 9)),
        1e-2,
    );
    assert_within(
        "diag",
        &check_fn(&[random(&[4, 4], 8)], 1e-2, |_, v| weigh(&v[0].diag(), 9)),
        1e-2,
    );
    assert_within(
        "reshape",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].reshape(2, 6), 9)),
        1e-2,
    );
}

#[test]
fn a_tensor_times_its_own_transpose_and_itself_has_the_right_gradient() {
    // dfdx alone panics in backward here: both operands share one gradient slot.
    let a = random(&[3, 4], 1);
    assert_within(
        "u uᵀ",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].matmul_t(&v[0]), 9)),
        1e-2,
    );
    assert_within(
        "u · uᵀ",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&v[0].matmul(&v[0].t()), 9)),
        1e-2,
    );
    assert_within(
        "x * x",
        &check_fn(std::slice::from_ref(&a), 1e-2, |_, v| weigh(&(&v[0] * &v[0]), 9)),
        1e-2,
    );
    assert_within(
        "x * x / x",
        &check_fn(&[positive(&[3, 4], 2)], 1e-3, |_, v| weigh(&(&v[0] * &v[0] / &v[0]), 9)),
        1e-2,
    );
}

#[test]
fn l2_normalize_of_a_zero_row_has_a_zero_gradient_not_nan() {
    let mut x = random(&[3, 4], 1);
    x.data[4..8].iter_mut().for_each(|v| *v = 0.0);
    let g = Graph::new(true);
    let v = g.input(&x).unwrap();
    let u = v.l2_normalize();
    assert!(u.values()[4..8].iter().all(|&y| y == 0.0));
    let loss = weigh(&u, 2);
    let d = g.backward(&loss).unwrap().of(&v);
    assert!(d.iter().all(|v| v.is_finite()), "{d:?}");
}

#[test]
fn convolution_and_pooling_on_the_tape_match_finite_differences() {
    for (xs, ws, stride, padding, groups) in
        [([2, 3, 5, 4], [4, 3, 3, 3], 1, 1, 1), ([1, 4, 6, 5], [2, 2, 3, 2], 2, 1, 2)]
    {
        let x = random(&[xs[0], xs[1] * xs[2] * xs[3]], 1);
        let w = random(&[ws[0], ws[1] * ws[2] * ws[3]], 2);
        let chw = [xs[1], xs[2], xs[3]];
        assert_within(
            "conv2d",
            &check_fn(&[x, w], 1e-2, move |_, v| {
                let (y, [o, _, _]) =
                    conv2d(&v[0], chw, &v[1], [ws[2], ws[3]], stride, padding, groups);
                weigh(&global_avg_pool(&y, o).square(), 9) + weigh(&y, 8)
            }),
            1e-2,
        );
    }
}

#[test]
fn a_conv_net_on_the_tape_matches_finite_differences() {
    // Conv → BatchNorm2d → GELU → Conv → global average pool: the kit's kernels as custom ops,
    // composed with tape ops, no backward written for the network itself. (GELU, not ReLU:
    // central differences across a ReLU or max-pool kink measure neither slope; max pooling is
    // checked alone below.)
    struct Net {
        c1: Conv2d,
        bn: BatchNorm2d,
        c2: Conv2d,
    }
    impl Module for Net {
        fn visit_params(&mut self, f: &mut dyn FnMut(&mut crate::kit::Param)) {
            self.c1.visit_params(f);
            self.bn.visit_params(f);
            self.c2.visit_params(f);
        }
    }
    let init = Init::new(4);
    let mut net = Net {
        c1: Conv2d::new(&init.pp("c1"), 2, 3, 3, 1, 1),
        bn: BatchNorm2d::new(&init.pp("bn"), 3),
        c2: Conv2d::new(&init.pp("c2"), 3, 4, 3, 1, 1),
    };
    net.bn.0.weight.value = vec![0.7, 1.3, -0.9];
    let x = random(&[3, 2 * 6 * 6], 5);
    let checked = check(&mut net, &[x], 1e-3, |m, g, v| {
        let (h, s) = m.c1.forward(g, &v[0], [2, 6, 6]);
        let h = m.bn.forward(g, &h, s).gelu();
        let (h, s) = m.c2.forward(g, &h, s);
        weigh(&global_avg_pool(&h, s[0]), 9)
    });
    assert_eq!(checked.len(), 5, "{checked:?}");
    assert_within("conv net", &checked, 1e-2);
    let x = random(&[2, 3 * 6 * 5], 6);
    assert_within(
        "max_pool2d",
        &check_fn(&[x], 1e-3, |_, v| {
            let (y, s) = max_pool2d(&v[0], [3, 6, 5], 2, 2, 0);
            assert_eq!(s, [3, 3, 2]);
            weigh(&y, 9)
        }),
        1e-2,
    );
}

#[test]
fn layers_match_finite_differences_and_keep_pytorch_names() {
    let init = Init::new(3);
    let mut lin = Linear::new(&init.pp("fc"), 4, 3, true);
    assert_within(
        "linear",
        &check(&mut lin, &[random(&[5, 4], 1)], 1e-2, |m, g, v| weigh(&m.forward(g, &v[0]), 9)),
        1e-2,
    );
    let mut bn = BatchNorm1d::new(&init.pp("bn"), 4);
    bn.weight.value = random(&[4], 4).data;
    bn.bias.value = random(&[4], 5).data;
    assert_within(
        "batch-norm (train)",
        &check(&mut bn, &[random(&[6, 4], 1)], 1e-2, |m, g, v| weigh(&m.forward(g, &v[0]), 9)),
        2e-2,
    );
    let mut head = Head::barlow_twins(&init.pp("projector"), 4, 6, 3);
    let mut names = Vec::new();
    head.visit_params(&mut |p| names.push(p.name.clone()));
    assert_eq!(names[..3], ["projector.0.weight", "projector.1.weight", "projector.1.bias"]);
    assert!(
        names.contains(&"projector.4.running_var".to_string())
            && names.last().unwrap() == "projector.6.weight",
        "{names:?}"
    );
    // seed 22 keeps every ReLU input at least one step from its kink
    assert_within(
        "head",
        &check(&mut head, &[random(&[5, 4], 22)], 1e-3, |m, g, v| weigh(&m.forward(g, &v[0]), 9)),
        2e-2,
    );
}

#[test]
fn batch_norm_eval_uses_running_statistics_and_training_updates_them_as_pytorch() {
    let init = Init::new(1);
    let mut ours = BatchNorm1d::new(&init.pp("bn"), 3);
    let mut kit = crate::kit::BatchNorm::new(&init.pp("bn"), 3);
    let x = random(&[5, 3], 2);
    let g = Graph::new(true);
    let y = ours.forward(&g, &g.input(&x).unwrap()).values();
    let yk = kit.forward(&x, true);
    for (a, b) in y.iter().zip(&yk.data) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    for (a, b) in ours
        .running_var
        .value
        .iter()
        .zip(&kit.running_var.value)
        .chain(ours.running_mean.value.iter().zip(&kit.running_mean.value))
    {
        assert!((a - b).abs() < 1e-6, "running statistics {a} vs {b}");
    }
    let g = Graph::no_grad(false);
    let y = ours.forward(&g, &g.input(&x).unwrap()).values();
    let yk = kit.forward(&x, false);
    for (a, b) in y.iter().zip(&yk.data) {
        assert!((a - b).abs() < 1e-5, "eval {a} vs {b}");
    }
    assert_within(
        "batch-norm (eval)",
        &check(&mut ours, &[x], 1e-2, |m, _, v| {
            let g = v[0].graph().clone();
            let eval = Graph::new(false);
            let _ = g;
            weigh(&m.forward(&eval, &eval.input(&v[0].value()).unwrap()), 9).item();
            weigh(&m.forward(v[0].graph(), &v[0]), 9)
        }),
        2e-2,
    );
}

#[test]
fn the_simclr_head_is_the_hand_written_head_value_for_value() {
    // the hand-written layers it replaced, built from the same initialiser in the same order
    let init = Init::new(5).pp("projector");
    let mut kit = Sequential::new()
        .push(KitLinear::new(&init.pp("0"), 6, 8, false))
        .push(BatchNorm::new(&init.pp("1"), 8))
        .push(Relu::new())
        .push(KitLinear::new(&init.pp("3"), 8, 4, true));
    let mut ours = Head::simclr(&Init::new(5).pp("projector"), 6, 8, 4);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    kit.visit_params(&mut |p| a.push((p.name.clone(), p.value.clone(), p.role)));
    ours.visit_params(&mut |p| b.push((p.name.clone(), p.value.clone(), p.role)));
    assert_eq!(a, b);
    let x = random(&[5, 6], 1);
    let g = Graph::new(true);
    let y = ours.forward(&g, &g.input(&x).unwrap()).values();
    for (p, q) in y.iter().zip(&kit.forward(&x, true).data) {
        assert!((p - q).abs() < 1e-5, "{p} vs {q}");
    }
    let t = ours.target_copy("target_projector");
    let mut t = t;
    let mut seen = Vec::new();
    t.visit_params(&mut |p| seen.push((p.name.clone(), p.role, p.ema_of.clone())));
    assert_eq!(
        seen[0],
        (
            "target_projector.0.weight".into(),
            crate::abi::ParamRole::Target,
            Some("projector.0.weight".into())
        )
    );
}

#[test]
fn shape_mismatches_are_errors_naming_the_operation_and_both_shapes() {
    let g = Graph::new(true);
    let a = g.input(&random(&[4, 8], 1)).unwrap();
    let b = g.input(&random(&[5, 3], 2)).unwrap();
    let e = catch_op_errors(|| Ok(a.matmul(&b))).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[4, 8]") && e.contains("[5, 3]"), "{e}");
    let e = catch_op_errors(|| Ok(&a + &b)).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[4, 8]") && e.contains("[5, 3]"), "{e}");
    let e = catch_op_errors(|| Ok(a.pick(&[0, 1]))).unwrap_err().to_string();
    assert!(e.contains("2 indices for 4 rows"), "{e}");
    // a graph runs backward once
    let l = a.sum();
    g.backward(&l).unwrap();
    assert!(g.backward(&l).is_err());
}

#[test]
fn a_tensor_outside_the_loss_has_a_zero_gradient() {
    let g = Graph::new(true);
    let a = g.input(&random(&[2, 3], 1)).unwrap();
    let unused = g.input(&random(&[2, 3], 2)).unwrap();
    let mut grads = g.backward(&a.sum()).unwrap();
    assert_eq!(grads.of(&unused), vec![0.0; 6]);
    assert_eq!(grads.of(&a), vec![1.0; 6]);
}

#[test]
fn no_grad_vars_are_constants_in_a_recording_graph() {
    let g = Graph::new(true);
    let ng = Graph::no_grad(true);
    let a = g.input(&random(&[2, 3], 1)).unwrap();
    let c = ng.input(&random(&[2, 3], 2)).unwrap();
    let l = (&c * &a).sum() + a.detach().square().sum();
    let d = g.backward(&l).unwrap().of(&a);
    assert_eq!(d, c.values());
}

/// Attention against PyTorch's `scaled_dot_product_attention` in timm's layout (the output and
/// the gradient of Σ out ⊙ w; fixtures/attention.py), and against finite differences.
#[test]
fn attention_matches_pytorch_and_finite_differences() {
    use super::attention::attention;
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/attention.json")).expect("fixture");
    let floats = |k: &str| crate::testing::floats(&fx[k]);
    let (seqs, heads) =
        (fx["seqs"].as_u64().unwrap() as usize, fx["heads"].as_u64().unwrap() as usize);
    let qkv: Vec<f32> = floats("qkv").iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = floats("w").iter().map(|&v| v as f32).collect();
    let cols = 18;
    let rows = qkv.len() / cols;
    let g = Graph::new(true);
    let x = g.input(&Tensor::new(vec![rows, cols], qkv.clone())).unwrap();
    let out = attention(&x, seqs, heads);
    crate::testing::assert_close_floor(
        "attention output",
        &out.values(),
        &floats("out"),
        1e-5,
        1e-3,
    );
    let wv = g.from_vec(rows, cols / 3, w);
    let mut grads = g.backward(&(&out * &wv).sum()).unwrap();
    crate::testing::assert_close_floor(
        "d out / d qkv",
        &grads.of(&x),
        &floats("grad_qkv"),
        1e-4,
        1e-3,
    );
    // finite differences, a larger case: 3 sequences of 4 tokens, 3 heads of 2
    let checked = check_fn(&[random(&[12, 18], 5)], 1e-2, |_, v| weigh(&attention(&v[0], 3, 3), 6));
    assert_within("attention", &checked, 1e-2);
    // a layout that does not split is refused by the SDK, not by a panic inside dfdx
    let e = catch_op_errors(|| Ok(attention(&x, 3, heads))).unwrap_err().to_string();
    assert!(e.contains("attention") && e.contains("sequences"), "{e}");
}

/// The transpose against the definition at square, wide and tall shapes; its backward hands
/// `dyᵀ` back.
#[test]
fn transpose_is_the_transpose_at_any_shape() {
    for (r, c) in [(1, 1), (3, 70), (70, 45), (300, 259), (33, 2100)] {
        let g = Graph::new(true);
        let x = g.from_vec(r, c, random(&[r, c], 4).data);
        let y = x.t();
        assert_eq!(y.dims(), (c, r));
        let (xv, yv) = (x.values(), y.values());
        for i in 0..r {
            for j in 0..c {
                assert_eq!(yv[j * r + i], xv[i * c + j], "[{r}, {c}] at ({i}, {j})");
            }
        }
        let w = random(&[c, r], 5).data;
        let loss = (&y * &g.from_vec(c, r, w.clone())).sum();
        let dx = g.backward(&loss).unwrap().of(&x);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(dx[i * c + j], w[j * r + i], "gradient of [{r}, {c}] at ({i}, {j})");
            }
        }
    }
}

/// GELU over more values than one parallel chunk equals its formula at every value.
#[test]
fn gelu_is_its_formula_across_chunks() {
    let n = (1 << 14) * 2 + 77;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32 - 0.5) * 8.0).collect();
    let g = Graph::new(true);
    let v = g.from_vec(1, n, x.clone());
    let out = v.gelu();
    let (y, d) = (out.values(), g.backward(&out.sum()).unwrap().of(&v));
    for (k, &x) in x.iter().enumerate() {
        let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
        assert!((y[k] - x * cdf).abs() < 1e-6, "gelu({x})");
        assert!((d[k] - (cdf + x * pdf)).abs() < 1e-5, "gelu'({x})");
    }
}

/// The fused layer norm against finite differences, and against the same maths from the
/// element-wise ops (values and all three gradients) at a shape of several row blocks.
#[test]
fn layer_norm_matches_finite_differences_and_the_composed_ops() {
    let (x, gm, bt) = (random(&[5, 7], 1), positive(&[1, 7], 2), random(&[1, 7], 3));
    assert_within(
        "layer_norm_rows",
        &check_fn(&[x, gm, bt], 1e-2, |_, v| weigh(&v[0].layer_norm_rows(&v[1], &v[2], 1e-6), 9)),
        2e-2,
    );
    let (r, c) = (300, 33);
    let (x, gm, bt, w) =
        (random(&[r, c], 4), positive(&[1, c], 5), random(&[1, c], 6), random(&[r, c], 7));
    let run = |fused: bool| {
        let g = Graph::new(true);
        let (xv, gv, bv) = (
            g.from_vec(r, c, x.data.clone()),
            g.from_vec(1, c, gm.data.clone()),
            g.from_vec(1, c, bt.data.clone()),
        );
        let y = if fused {
            xv.layer_norm_rows(&gv, &bv, 1e-5)
        } else {
            let xc = &xv - &xv.mean_rows();
            let var = xc.square().mean_rows();
            (&xc / &(var + 1e-5).sqrt()) * &gv + &bv
        };
        let loss = (&y * &g.from_vec(r, c, w.data.clone())).sum();
        let mut grads = g.backward(&loss).unwrap();
        (y.values(), grads.of(&xv), grads.of(&gv), grads.of(&bv))
    };
    let (a, b) = (run(true), run(false));
    for (name, p, q) in
        [("y", &a.0, &b.0), ("dx", &a.1, &b.1), ("dγ", &a.2, &b.2), ("dβ", &a.3, &b.3)]
    {
        let worst =
            p.iter().zip(q).map(|(p, q)| (p - q).abs() / (1.0 + q.abs())).fold(0.0, f32::max);
        assert!(worst < 1e-4, "layer norm {name}: fused and composed differ by {worst}");
    }
    let g = Graph::new(true);
    let bad = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.from_vec(2, 3, vec![0.0; 6]).layer_norm_rows(
            &g.from_vec(1, 4, vec![1.0; 4]),
            &g.from_vec(1, 3, vec![0.0; 3]),
            1e-5,
        )
    }));
    assert!(bad.is_err(), "a γ of the wrong width is refused");
}

/// The fused ops: `logsumexp_rows` leaves −∞ entries out and gives −∞ (log 0) for a row left
/// out entirely; `batch_norm_cols` is the element-wise maths it fuses, with the columns'
/// means and biased variances.
#[test]
fn fused_logsumexp_and_batch_norm_agree_with_their_maths() {
    let g = Graph::new(true);
    let ninf = f32::NEG_INFINITY;
    let x = g.from_vec(2, 3, vec![0.0, ninf, 1.0, ninf, ninf, ninf]);
    let l = x.logsumexp_rows().values();
    assert!((l[0] - (1.0 + 1.0f32.exp()).ln()).abs() < 1e-6, "{l:?}");
    assert_eq!(l[1], ninf);
    let x = g.from_vec(3, 2, vec![1.0, -2.0, 0.5, 4.0, -1.5, 3.0]);
    let (y, mean, var) = x.batch_norm_cols(None, 1e-5);
    let composed = x.sub(&x.mean_cols()).div(&(x.var_cols() + 1e-5).sqrt()).values();
    for (a, b) in y.values().iter().zip(&composed) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert!(mean[0].abs() < 1e-6 && (mean[1] - 5.0 / 3.0).abs() < 1e-6, "{mean:?}");
    assert!((var[0] - 7.0 / 6.0).abs() < 1e-5, "{var:?}");
}
