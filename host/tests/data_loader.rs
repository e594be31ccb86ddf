//! The loader with the real `pipeline` augmentation linked in-process: identical batches and
//! views with 1 and 4 threads, different ones for another seed or epoch, P×K batches.

use latent_abi::Context;
use latent_host::data::{self, Batch, Dataset, Loader, LoaderConfig, Sampler};
use latent_host::plugins::Augment;
use latent_plugin_pipeline::Pipeline;
use std::sync::Arc;

fn pipeline(cfg: &str) -> Augment {
    let obj =
        latent_sdk::plugin::new_augmentation::<Pipeline>(cfg.into(), &Context::default()).unwrap();
    Augment::new("pipeline", obj)
}

fn mnist() -> Arc<Dataset> {
    // a 600-image slice of the embedded training set keeps the test fast
    let mut d = data::open("embedded:mnist-5k").unwrap().train;
    let keep: Vec<usize> = (0..d.len()).step_by(d.len() / 600).take(600).collect();
    let images = keep.iter().flat_map(|&i| d.image(i).to_vec()).collect();
    d.labels = keep.iter().map(|&i| d.labels[i]).collect();
    d.images = images;
    Arc::new(d)
}

fn run(d: &Arc<Dataset>, views: &[Augment], cfg: &LoaderConfig) -> Vec<Batch> {
    Loader::new(d.clone(), views.to_vec(), cfg)
        .unwrap()
        .collect::<anyhow::Result<Vec<_>>>()
        .unwrap()
}

#[test]
fn loader_gives_identical_batches_with_1_and_4_threads() {
    let d = mnist();
    let views = vec![
        pipeline(r#"{"preset": "byol", "view": 0}"#),
        pipeline(r#"{"preset": "byol", "view": 1, "size": 24}"#),
    ];
    let cfg = LoaderConfig { batch_size: 64, seed: 42, epoch: 3, threads: 1, ..Default::default() };
    let one = run(&d, &views, &cfg);
    let four = run(&d, &views, &LoaderConfig { threads: 4, prefetch: 1, ..cfg.clone() });
    assert_eq!(one.len(), 600 / 64); // drop_last
    assert_eq!(one, four);
    let b = &one[0];
    assert_eq!(b.views[0].shape, vec![64, 1, 28, 28]);
    assert_eq!(b.views[1].shape, vec![64, 1, 24, 24]);
    assert_eq!(b.labels, b.indices.iter().map(|&i| d.labels[i]).collect::<Vec<_>>());
    for v in &b.views {
        let bad: Vec<f32> =
            v.data.iter().copied().filter(|x| !(0.0..=1.0).contains(x)).take(5).collect();
        assert!(bad.is_empty(), "values outside [0, 1]: {bad:?}");
    }
    // another epoch reshuffles and redraws
    let next = run(&d, &views, &LoaderConfig { epoch: 4, ..cfg.clone() });
    assert_ne!(next[0].indices, one[0].indices);
    // another seed draws other views of the same images
    let other =
        run(&d, &views, &LoaderConfig { seed: 43, sampler: Sampler::Sequential, ..cfg.clone() });
    let seq = run(&d, &views, &LoaderConfig { sampler: Sampler::Sequential, ..cfg.clone() });
    assert_eq!(other[0].indices, seq[0].indices);
    assert_ne!(other[0].views[0], seq[0].views[0]);
    // a view depends on (seed, epoch, image, view), not on its batch: Shuffle and Sequential agree per image
    for (pos, &img) in one[0].indices.iter().enumerate() {
        let (sb, sp) = (img / 64, img % 64);
        if sb < seq.len() {
            assert_eq!(
                one[0].views[0].data[pos * 784..(pos + 1) * 784],
                seq[sb].views[0].data[sp * 784..(sp + 1) * 784]
            );
        }
    }
}

#[test]
fn class_balanced_loader_with_augmentation() {
    let d = mnist();
    let cfg = LoaderConfig {
        seed: 1,
        threads: 2,
        sampler: Sampler::ClassBalanced { classes: 4, per_class: 8 },
        ..Default::default()
    };
    let b = run(&d, &[pipeline("{}")], &cfg);
    assert_eq!(b.len(), 600 / 32);
    for batch in &b {
        assert_eq!(batch.views[0].shape, vec![32, 1, 28, 28]);
        let mut labels = batch.labels.clone();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), 4);
    }
}

#[test]
fn rgb_fixture_through_simclr_views() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/cifar10-png");
    let d = Arc::new(data::open(&format!("folder:{dir}")).unwrap().train);
    let views = vec![pipeline(r#"{"strength": 0.5}"#), pipeline(r#"{"strength": 0.5}"#)];
    let cfg = LoaderConfig { batch_size: 8, threads: 3, ..Default::default() };
    let b = run(&d, &views, &cfg);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].views[0].shape, vec![8, 3, 32, 32]);
    assert_ne!(b[0].views[0], b[0].views[1], "two views of one image use different seeds");
    assert_eq!(b, run(&d, &views, &LoaderConfig { threads: 1, ..cfg }));
}

#[test]
fn a_view_that_refuses_the_images_fails_early() {
    let d = Arc::new(data::open("embedded:mnist-5k").unwrap().train);
    let bad = pipeline(r#"{"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}"#);
    let e = Loader::new(d, vec![bad], &LoaderConfig::default()).err().unwrap().to_string();
    assert!(e.contains("pipeline") && e.contains("mnist-5k"), "{e}");
}
