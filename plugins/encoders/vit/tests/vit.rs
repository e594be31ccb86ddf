//! The `vit` plugin: outputs against a PyTorch ViT in timm's layout with the same weights (at
//! the embeddings' own size and at an interpolated one), gradients against finite differences
//! through the ABI, drop-path, parameter names and counts, config errors.

use abi_stable::std_types::RVec;
use latent_plugin_vit::{bilinear, Vit};
use latent_sdk::abi::{Context, EncoderBox, ParamRole};
use latent_sdk::check::{encoder_gradients, FdOptions};
use latent_sdk::kit::gradcheck::random;
use latent_sdk::kit::Tensor;
use latent_sdk::plugin::{new_encoder, Taped};
use latent_sdk::testing::{assert_close_floor, floats};

fn encoder(config: &str) -> EncoderBox {
    let ctx = Context { seed: 3, ..Context::default() };
    new_encoder::<Taped<Vit>>(config.into(), &ctx).into_result().unwrap_or_else(|e| panic!("{e}"))
}

fn forward(enc: &mut EncoderBox, x: &Tensor, train: bool) -> Tensor {
    Tensor::from_desc(enc.forward(x.clone().into_desc(), train).into_result().unwrap()).unwrap()
}

#[test]
fn matches_a_pytorch_vit_with_the_same_weights_at_its_size_and_interpolated() {
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/vit.json")).expect("fixture");
    let mut enc = encoder(&fx["config"].to_string());
    assert_eq!(enc.out_dim(RVec::from(vec![3, 8, 12])).into_result().unwrap(), 8);
    // the fixture's weights, by timm's names and shapes
    let params = enc.params().into_result().unwrap();
    let mut values = Vec::new();
    for p in params.iter() {
        let w = floats(&fx["weights"][p.name.as_str()]);
        assert!(!w.is_empty(), "the fixture has no {}", p.name);
        let shape: Vec<usize> = p.shape.iter().map(|&s| s as usize).collect();
        assert_eq!(w.len(), shape.iter().product::<usize>(), "{}", p.name);
        values.push(Tensor::new(shape, w.iter().map(|&v| v as f32).collect()).into_desc());
    }
    assert_eq!(params.len(), fx["weights"].as_object().unwrap().len());
    enc.write_params(RVec::from(values)).into_result().unwrap();
    // its own size, then larger and smaller grids (position embeddings interpolated)
    for (h, w) in [(8, 12), (12, 16), (4, 8)] {
        let key = format!("{h}x{w}");
        let x: Vec<f32> = floats(&fx[format!("images{key}")]).iter().map(|&v| v as f32).collect();
        let y = forward(&mut enc, &Tensor::new(vec![3, 3, h, w], x), false);
        assert_eq!(y.shape, vec![3, 8]);
        let want = floats(&fx[format!("out{key}")]);
        assert_close_floor(&format!("output at {key}"), &y.data, &want, 1e-4, 1e-3);
    }
}

#[test]
fn gradients_match_finite_differences_through_the_abi() {
    let mut enc =
        encoder(r#"{"preset": "custom", "dim": 8, "depth": 2, "heads": 2, "mlp_ratio": 2.0}"#);
    enc.out_dim(RVec::from(vec![1, 8, 8])).into_result().unwrap();
    let x = random(&[3, 1, 8, 8], 4);
    let o = FdOptions { h: 1e-2, max_entries: 24, floor: 1e-2 };
    for e in encoder_gradients(&mut enc, &x, o).unwrap() {
        assert!(e.error < 2e-2, "{}: relative error {:.2e}", e.name, e.error);
    }
    // and at an interpolated size, through the position embeddings' interpolation
    let x = random(&[2, 1, 12, 12], 5);
    for e in encoder_gradients(&mut enc, &x, o).unwrap() {
        assert!(e.error < 2e-2, "12x12, {}: relative error {:.2e}", e.name, e.error);
    }
}

#[test]
fn presets_have_timm_names_and_sizes() {
    let mut enc = encoder(r#"{"preset": "vit-tiny", "in_channels": 3}"#);
    assert_eq!(enc.out_dim(RVec::from(vec![3, 32, 32])).into_result().unwrap(), 192);
    let ps = enc.params().into_result().unwrap();
    let find = |n: &str| ps.iter().find(|p| p.name.as_str() == n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(find("patch_embed.proj.weight").shape.to_vec(), vec![192, 3, 4, 4]);
    assert_eq!(find("pos_embed").shape.to_vec(), vec![1, 65, 192]);
    assert_eq!(find("cls_token").role, ParamRole::NoDecay);
    assert_eq!(find("blocks.11.attn.qkv.weight").shape.to_vec(), vec![576, 192]);
    assert_eq!(find("blocks.0.mlp.fc1.weight").shape.to_vec(), vec![768, 192]);
    assert_eq!(find("blocks.0.norm1.weight").role, ParamRole::NoDecay);
    assert!(ps.iter().any(|p| p.name.as_str() == "norm.bias"));
    // timm's vit_tiny_patch16_224 without its 1000-class head has 5,524,416 parameters; here
    // 4x4 patches (a 48-wide patch embedding, not 768) and 65 tokens, not 197:
    // 5,524,416 − (768 − 48)·192 − (197 − 65)·192 = 5,360,832
    let n: u64 = ps.iter().map(|p| p.shape.iter().product::<u64>()).sum();
    assert_eq!(n, 5_360_832);
}

#[test]
fn drop_path_is_the_same_for_the_same_images_and_off_in_evaluation() {
    let cfg = r#"{"preset": "custom", "dim": 8, "depth": 3, "heads": 2, "drop_path": 0.5}"#;
    let mut enc = encoder(cfg);
    let mut plain = encoder(r#"{"preset": "custom", "dim": 8, "depth": 3, "heads": 2}"#);
    for e in [&mut enc, &mut plain] {
        e.out_dim(RVec::from(vec![1, 8, 8])).into_result().unwrap();
    }
    let x = random(&[16, 1, 8, 8], 6);
    let (a, b) = (forward(&mut enc, &x, true), forward(&mut enc, &x, true));
    assert_eq!(a.data, b.data, "the same images draw the same masks");
    assert_ne!(a.data, forward(&mut plain, &x, true).data, "drop-path dropped something");
    assert_eq!(forward(&mut enc, &x, false).data, forward(&mut plain, &x, false).data);
}

/// Drop-path's mask: whole images dropped at about the rate, the kept ones scaled by
/// 1 / (1 − rate), every row of an image alike; the patches' backward against finite
/// differences (the parameter check above does not reach the images).
#[test]
fn drop_mask_and_patchify_do_what_they_say() {
    use latent_plugin_vit::{drop_mask, patchify};
    use latent_sdk::autodiff::gradcheck::{assert_within, check_fn};
    use latent_sdk::autodiff::Graph;
    let g = Graph::new(true);
    let m = drop_mask(&g, 2000, 3, 0.25, 7).values();
    let per_image: Vec<f32> = m
        .chunks(3)
        .map(|c| {
            assert!(c.iter().all(|&v| v == c[0]), "rows of one image differ: {c:?}");
            c[0]
        })
        .collect();
    assert!(per_image.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let dropped = per_image.iter().filter(|&&v| v == 0.0).count() as f64 / 2000.0;
    assert!((dropped - 0.25).abs() < 0.04, "dropped {dropped}");
    let checked = check_fn(&[random(&[2, 2 * 8 * 12], 8)], 1e-2, |g, v| {
        let p = patchify(&v[0], [2, 8, 12], 4);
        let w = g.from_vec(p.rows(), p.cols(), random(&[p.rows(), p.cols()], 9).data);
        (&p * &w).sum()
    });
    assert_within("patchify", &checked, 1e-3);
}

#[test]
fn bilinear_interpolation_to_the_same_grid_is_the_identity_and_rows_sum_to_one() {
    let m = bilinear(3, 3, 3, 3);
    for i in 0..9 {
        for j in 0..9 {
            assert_eq!(m[i * 9 + j], if i == j { 1.0 } else { 0.0 });
        }
    }
    let m = bilinear(2, 2, 5, 3);
    for row in m.chunks(4) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
    // PyTorch's half-pixel rule in 1-d: 2 → 4 points sit at 0, 0.25, 0.75, 1 between the two
    // sources (clamped at the edges); 4 → 2 averages neighbours
    assert_eq!(bilinear(1, 2, 1, 4), vec![1.0, 0.0, 0.75, 0.25, 0.25, 0.75, 0.0, 1.0]);
    assert_eq!(bilinear(1, 4, 1, 2), vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
}

#[test]
fn bad_configs_and_images_are_refused_naming_the_key() {
    let ctx = Context::default();
    for (cfg, says) in [
        (r#"{"preset": "vit-huge"}"#, "preset must be one of"),
        (r#"{"preset": "custom", "dim": 10, "depth": 1, "heads": 3}"#, "must divide by heads"),
        (r#"{"preset": "custom", "depth": 1, "heads": 3}"#, "needs `dim`"),
        (r#"{"dim": 8}"#, "`dim` applies only to preset custom"),
        (r#"{"drop_path": 1.0}"#, "drop_path"),
        (r#"{"patch_size": 0}"#, "patch_size"),
    ] {
        let e =
            new_encoder::<Taped<Vit>>(cfg.into(), &ctx).into_result().err().expect(cfg).to_string();
        assert!(e.contains(says) && e.contains("vit"), "{cfg}: {e}");
    }
    let mut enc = encoder("");
    let e = enc.out_dim(RVec::from(vec![1, 30, 30])).into_result().unwrap_err().to_string();
    assert!(e.contains("patch_size must divide"), "{e}");
}
