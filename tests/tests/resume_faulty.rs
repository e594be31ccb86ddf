//! A run stopped and resumed gives bitwise the losses and the final weights of an
//! uninterrupted run (the `faulty-encoder` + `faulty` plugins with no fault, so it takes
//! seconds): data order, augmentation seeds, learning rates and optimizer state all continue
//! from the checkpoint. Stops are `--stop-after` (the code path of Ctrl-C, see faults.rs for a
//! real SIGINT) at a checkpoint-aligned step and at one that is not.

use latent_host::train::checkpoint;
use latent_tests::{latent, text};
use std::path::Path;

const STEPS: u64 = 10;

fn args(out: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), "--out".into(), out.display().to_string()];
    for s in [
        "encoder.plugin=faulty-encoder",
        "objective.plugin=faulty",
        "train.max_steps=10",
        "train.batch_size=8",
        "train.checkpoint_every=4",
        "optim.name=adamw",
        "optim.lr=0.01",
        "data.threads=2",
        "data.max_train_images=48",
        "data.max_test_images=32",
        "eval.linear_probe=false",
        "eval.every_epochs=0",
    ] {
        a.push("--set".into());
        a.push(s.into());
    }
    a
}

fn train(extra: &[&str], out: &Path) {
    let mut a = args(out);
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = latent(&a);
    assert!(o.status.success(), "{}", text(&o));
}

/// (step, loss bits) of every step record, in file order.
fn losses(run: &Path) -> Vec<(u64, u64)> {
    latent_host::train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "step")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap().to_bits()))
        .collect()
}

#[test]
fn stop_and_resume_gives_bitwise_the_losses_and_weights_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    train(&[], &whole);
    let want = losses(&whole);
    assert_eq!(want.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=STEPS).collect::<Vec<_>>());
    assert!(
        want.iter().any(|&(_, l)| f64::from_bits(l) != 0.0),
        "the loss is not trivially zero: {want:?}"
    );
    let final_weights = checkpoint::load(&whole).unwrap().tensors;

    // 48 images / 8 = 6 steps an epoch: stop at 3 (mid-epoch, between checkpoints), then at 7
    // (in the second epoch), then finish
    let parts = dir.path().join("parts");
    train(&["--stop-after", "3"], &parts);
    let resume = |extra: &[&str]| {
        let mut a = vec!["train", "--resume", "--out", parts.to_str().unwrap()];
        a.extend_from_slice(extra);
        let o = latent(&a);
        assert!(o.status.success(), "{}", text(&o));
    };
    resume(&["--stop-after", "7"]);
    resume(&[]);
    let got = losses(&parts);
    assert_eq!(
        got, want,
        "the losses of stop-at-3, stop-at-7, finish (left) and of one run (right) differ"
    );
    assert_eq!(
        checkpoint::load(&parts).unwrap().tensors,
        final_weights,
        "the final weights and optimizer state differ"
    );
}
