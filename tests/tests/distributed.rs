//! Issue #18: data-parallel training under `mpirun`. N ranks with a global batch of B must
//! train the model one process trains with a batch of B; each test below would fail on one of
//! the field's common distributed bugs (named in its doc).
//!
//! These tests are `#[ignore]`d: they need OpenMPI's `mpirun` and `latent-mpi`, the `latent`
//! binary built with the `mpi` feature and copied beside the plugins. `.ci/run` installs
//! OpenMPI, builds both and runs them:
//! ```text
//! cargo build -p latent-host --features mpi && cp target/debug/latent target/debug/latent-mpi
//! cargo test -p latent-tests --test distributed -- --ignored
//! ```

use latent_host::train::checkpoint;
use latent_sdk::kit::Tensor;
use latent_tests::{build_dir, plugin_dir, text};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/small-mnist.toml").display().to_string()
}

/// `latent` built with `--features mpi`.
fn mpi_bin() -> PathBuf {
    plugin_dir();
    let p = build_dir().join("latent-mpi");
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build -p latent-host --features mpi && cp target/debug/latent target/debug/latent-mpi`",
        p.display()
    );
    p
}

/// `mpirun -np ranks latent-mpi ARGS` (ranks = 1: the same binary without mpirun).
fn command(ranks: usize, args: &[String]) -> Command {
    let mut c = if ranks == 1 {
        Command::new(mpi_bin())
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np", &ranks.to_string()]);
        c.arg(mpi_bin());
        c
    };
    c.args(args).env_remove("LATENT_PLUGIN_PATH").env("NO_COLOR", "1");
    c
}

fn train_args(out: &Path, sets: &[&str]) -> Vec<String> {
    train_args_of(&config(), out, sets)
}

fn train_args_of(config: &str, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = vec!["train".into(), config.into(), "--out".into(), out.display().to_string()];
    for s in ["eval.every_epochs=0", "data.max_test_images=100"].iter().chain(sets) {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// Trains the small config on `ranks` ranks; returns the run directory.
fn train(dir: &Path, name: &str, ranks: usize, sets: &[&str]) -> PathBuf {
    train_config(&config(), dir, name, ranks, sets)
}

fn train_config(config: &str, dir: &Path, name: &str, ranks: usize, sets: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let o = command(ranks, &train_args_of(config, &out, sets)).output().expect("run mpirun");
    assert!(o.status.success(), "{ranks} ranks: {}", text(&o));
    out
}

fn step_losses(run: &Path) -> Vec<f64> {
    latent_host::train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r["kind"] == "step")
        .map(|r| r["loss"].as_f64().unwrap())
        .collect()
}

fn tensors(run: &Path) -> BTreeMap<String, Tensor> {
    checkpoint::load(run).unwrap().tensors
}

/// The largest |a − b| / max(1, max |a|) over the tensors whose name passes `keep`, with the
/// tensor where it is (relative for tensors of large values, absolute for small ones such
/// as batch-norm biases near 0).
fn max_rel_diff(
    a: &BTreeMap<String, Tensor>,
    b: &BTreeMap<String, Tensor>,
    keep: impl Fn(&str) -> bool,
) -> (f64, String) {
    let mut worst = (0.0, String::new());
    let names: Vec<&String> = a.keys().filter(|k| keep(k)).collect();
    assert!(!names.is_empty());
    for k in names {
        let (x, y) = (&a[k], b.get(k).unwrap_or_else(|| panic!("{k} missing")));
        assert_eq!(x.shape, y.shape, "{k}");
        let scale = x.data.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
        let d = x.data.iter().zip(&y.data).fold(0f64, |m, (p, q)| m.max((p - q).abs() as f64));
        if d / scale > worst.0 {
            worst = (d / scale, k.clone());
        }
    }
    worst
}

/// Trained state: everything but the batch-norm running statistics (per rank unless
/// synchronised) and the optimizer's moments (compared through the weights they move).
fn trained(name: &str) -> bool {
    !name.starts_with("optim.") && !name.contains("running_")
}

/// Float tolerances. The ranks sum the same numbers in another order (the batch-norm and
/// weight-gradient sums split across ranks), which moves the last bits, and SGD at lr 0.2 with
/// momentum carries that on by about 10× a step: measured on 3 ranks × 64 against 1 × 192,
/// the weights differ by 3e-8, 6e-8, 1e-6 after 1, 2, 3 steps, and up to 2e-4 after 5; with
/// batch-norm statistics per view, which amplify more, by 6e-8 and 1e-5 after 1 and 2 steps
/// (1, 2 and 3 ranks then differ from one another by as much as from one process).
/// A wrong gradient (a scale of 1/world_size, a missing term, per-rank batch norm where it
/// should be synchronised) moves them by 1e-2 and more from the first steps on.
const LOSS_TOL_2: f64 = 1e-6; // the first 2 steps' losses, relative
/// Every step's loss, relative. At step 4 the rounding carried by momentum reaches a few 1e-4:
/// SimCLR on 2 and on 3 ranks, over six variants of the conv's summation order (2026-12-03),
/// differed from one process by 0 to 3e-7 in the first three steps and by 4e-6 to 5.4e-4 at
/// step 4, each variant passing one of the two tests at 1e-4 and failing the other; as the
/// weights' TOL below, and far under the 1e-2 of a wrong gradient.
const LOSS_TOL: f64 = 1e-3;
const TOL: f64 = 1e-3; // the weights after 5 steps (see max_rel_diff)

/// `ranks` ranks against one process on the same global batch: step losses and final
/// weights; returns the worst relative weight difference.
fn same_training(ranks: usize, sets: &[&str], single_sets: &[&str]) -> f64 {
    same_training_of(&config(), ranks, sets, single_sets)
}

fn same_training_of(config: &str, ranks: usize, sets: &[&str], single_sets: &[&str]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let one = train_config(config, dir.path(), "one", 1, &[sets, single_sets].concat());
    let many = train_config(config, dir.path(), "many", ranks, sets);
    let (a, b) = (step_losses(&one), step_losses(&many));
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let tol = if i < 2 { LOSS_TOL_2 } else { LOSS_TOL };
        assert!(
            (x - y).abs() <= tol * x.abs().max(1.0),
            "step {i}: loss {x} (1 process) vs {y} ({ranks} ranks)"
        );
    }
    let (d, at) = max_rel_diff(&tensors(&one), &tensors(&many), trained);
    eprintln!("{ranks} ranks vs 1 process, {sets:?}: losses {a:?} / {b:?}; largest weight difference {d:.2e} ({at})");
    assert!(d <= TOL, "{ranks} ranks vs 1 process: {at} differs by {d:.2e} (relative)");
    d
}

const FIVE_STEPS: &str = "train.max_steps=5";

/// SimCLR: 2 ranks × 128 = 1 process × 256 with synchronised batch norm. Catches an
/// all-gather of negatives whose backward does not reach the other ranks (lightly #1528) and
/// a loss scaled by 1/world_size (lightly #1920, #1977).
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn simclr_on_two_ranks_trains_what_one_process_trains() {
    same_training(2, &[FIVE_STEPS, "train.batch_size=256", "train.sync_batchnorm=true"], &[]);
}

/// Synchronised batch norm per view: each view's statistics over every rank's slice of it.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn per_view_synchronised_batch_norm_on_two_ranks_trains_what_one_process_trains() {
    same_training(
        2,
        // statistics over the smaller per-view groups amplify rounding faster: a gentler rate
        &[
            FIVE_STEPS,
            "train.batch_size=256",
            "train.sync_batchnorm=true",
            "train.batch_norm=\"per_view\"",
            "optim.lr=0.05",
        ],
        &[],
    );
}

/// Multi-crop DINO (2 global views at 28 pixels, 2 local ones at 12; the teacher sees the
/// globals): each size group gathered across ranks, the smaller group's second pass
/// synchronised like the first.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn multi_crop_dino_on_two_ranks_trains_what_one_process_trains() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs/dino-multicrop.toml")
        .display()
        .to_string();
    same_training_of(&config, 2, &[FIVE_STEPS, "train.sync_batchnorm=true"], &[]);
}

/// Three ranks × 64 = one process × 192.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn simclr_on_three_ranks_trains_what_one_process_trains() {
    same_training(3, &[FIVE_STEPS, "train.batch_size=192", "train.sync_batchnorm=true"], &[]);
}

/// BYOL: the EMA target (an encoder of its own, with its own gathered features) and the
/// predictor, 2 ranks × 128 = 1 × 256.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn byol_on_two_ranks_trains_what_one_process_trains() {
    same_training(
        2,
        &[
            FIVE_STEPS,
            "train.batch_size=256",
            "train.sync_batchnorm=true",
            "objective.plugin=\"byol\"",
        ],
        &[],
    );
}

/// Triplet with P = 5 classes × K = 16: the global batch's third class (images 32..48)
/// straddles the ranks' boundary at 40, so positives, and negatives, cross ranks. Catches labels taken per rank or offset wrongly when gathered (lightly #1176).
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn triplet_with_labels_crossing_ranks_trains_what_one_process_trains() {
    same_training(
        2,
        &[
            FIVE_STEPS,
            "train.batch_size=80",
            "train.classes_per_batch=5",
            "train.sync_batchnorm=true",
            "objective.plugin=\"triplet\"",
        ],
        &[],
    );
}

/// MoCo v2: the queue of negatives is the global batch's keys on every rank, so rank 0's
/// checkpoint holds the queue one process builds. Catches a queue per rank (lightly #1018).
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn moco_queue_is_the_global_one_on_every_rank() {
    same_training(
        2,
        &[
            FIVE_STEPS,
            "train.batch_size=128",
            "train.sync_batchnorm=true",
            "objective.plugin=\"moco\"",
            "objective.config={queue_size=512}",
        ],
        &[],
    );
}

/// Batch norm per rank (DDP's default): 2 ranks with statistics per view equal one process
/// whose batch norm takes statistics over the same 4 slices (view × rank) of the batch. The
/// gradients are summed over ranks, not averaged: a 1/world_size scale moves every weight.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn per_rank_batch_norm_is_ddp_and_keeps_the_gradient_scale() {
    same_training(
        2,
        &[FIVE_STEPS, "train.batch_size=256", "train.batch_norm=\"per_view\""],
        // one process: the per-view slices cut once more at the ranks' boundary
        &["train.batch_norm=\"all_views\"", "encoder.config.bn_groups=4"],
    );
}

/// Without synchronised batch norm the ranks' statistics differ from one process's, and the
/// test above is what makes that difference exact; here it must show (or the sync is a no-op).
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn synchronised_batch_norm_changes_the_training() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [FIVE_STEPS, "train.batch_size=256"];
    let synced =
        train(dir.path(), "sync", 2, &[&sets[..], &["train.sync_batchnorm=true"]].concat());
    let per_rank = train(dir.path(), "ddp", 2, &sets);
    let (d, at) = max_rel_diff(&tensors(&synced), &tensors(&per_rank), trained);
    eprintln!("synchronised vs per-rank batch norm: {d:.2e} at {at}");
    // measured 1.7e-2; float noise is below 2e-4
    assert!(d > 5.0 * TOL, "synchronised and per-rank batch norm train alike ({d:.2e} at {at})");
}

/// `--resume` with another world size: 2 ranks stop after 3 steps, 3 ranks go on for 2
/// more; the result is the uninterrupted run's. Five steps, as `TOL` was measured for: with
/// six, rounding carried by momentum reached 1.09e-3 (2026-12-04, after the weight
/// gradients' summation order changed), past it.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn resume_works_with_another_world_size() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["train.max_steps=5", "train.batch_size=192", "train.sync_batchnorm=true"];
    let whole = train(dir.path(), "whole", 1, &sets);
    let out = dir.path().join("split");
    let mut args = train_args(&out, &sets);
    args.extend(["--stop-after".into(), "3".into()]);
    let o = command(2, &args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let resume = ["train".into(), "--resume".into(), "--out".into(), out.display().to_string()];
    let o = command(3, &resume).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (d, at) = max_rel_diff(&tensors(&whole), &tensors(&out), trained);
    eprintln!("resumed on 3 ranks against one process: {d:.2e} at {at}");
    assert!(d <= TOL, "resumed on 3 ranks: {at} differs by {d:.2e}");
    let (a, b) = (step_losses(&whole), step_losses(&out));
    assert_eq!(a.len(), b.len(), "every step logged once");
}

/// A global batch the ranks cannot share is refused, naming the key.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn a_batch_the_ranks_cannot_share_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o =
        command(3, &train_args(&dir.path().join("r"), &["train.batch_size=128"])).output().unwrap();
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("train.batch_size") && t.contains("3 ranks"), "{t}");
}

/// A rank whose plugin fails at step 3 ends every rank with a non-zero status, and the
/// message names the rank and the step; the checkpoint before it stays the latest.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn a_failing_rank_ends_every_rank_naming_rank_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let t0 = Instant::now();
    let o = command(
        2,
        &train_args(
            &out,
            &[
                "train.max_steps=8",
                "train.checkpoint_every=2",
                "encoder.plugin=\"faulty-encoder\"",
                // forward calls 0, 1, 2 are steps 0-2; the 4th call is step 3
                "encoder.config={fault=\"error\", at_step=3, rank=1}",
            ],
        ),
    )
    .output()
    .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("rank 1 of 2") && t.contains("step 3"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    let ck = checkpoint::load(&out).unwrap();
    assert_eq!(ck.state.step, 2, "the last checkpoint before the fault is the latest");
}

/// A rank whose parameters drift from the others' (a plugin with hidden state) is caught
/// at the end of the epoch, naming the rank and the epoch.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn ranks_whose_parameters_drift_apart_are_stopped_after_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let o = command(
        2,
        &train_args(
            &dir.path().join("r"),
            &[
                "train.epochs=1",
                "encoder.plugin=\"faulty-encoder\"",
                "encoder.config={fault=\"drift\", at_step=2, rank=1}",
            ],
        ),
    )
    .output()
    .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("after epoch 0, rank 1's parameters differ from rank 0's"), "{t}");
}

/// Waits until the run in `out` has a checkpoint at `step` or later.
fn wait_for_checkpoint(out: &Path, step: u64, child: &mut std::process::Child) {
    let t0 = Instant::now();
    loop {
        if checkpoint::load(out).is_ok_and(|c| c.state.step >= step) {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {step}");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The PID of rank `rank` of the run in `out` (OpenMPI sets the rank in the environment).
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let out = out.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).into_owned();
        (cmd.contains("latent-mpi")
            && cmd.contains(&out)
            && env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        .then_some(pid)
    })
}

/// Waits (at most `limit`) until no rank of the run in `out` is left and its lock is free.
fn wait_ranks_gone(out: &Path, ranks: usize, limit: Duration) {
    let t0 = Instant::now();
    while (0..ranks).any(|r| rank_pid(out, r).is_some()) {
        assert!(
            t0.elapsed() < limit,
            "a rank of {} is still running after {limit:?}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // and until the run's lock is free: a rank whose memory is already gone from /proc (so
    // that its command line no longer shows) may still be closing its files, the lock among
    // them (CI once resumed in that window and was refused "in use by another latent process")
    while latent_host::train::run_dir::lock_run(out).is_err() {
        assert!(
            t0.elapsed() < limit,
            "the lock of {} is still held after {limit:?}",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn long_run(out: &Path) -> std::process::Child {
    command(2, &train_args(out, &["train.max_steps=400", "train.checkpoint_every=2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `--resume` the run in `out` on `ranks` ranks until step `until`; it must succeed.
fn resume_a_few_steps(out: &Path, ranks: usize, until: u64) {
    let mut args: Vec<String> = ["train", "--resume", "--out"].map(String::from).to_vec();
    args.extend([out.display().to_string(), "--stop-after".into(), until.to_string()]);
    let o = command(ranks, &args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn finish(child: std::process::Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < limit, "the ranks took {:?} to end", t0.elapsed());
    o
}

/// A rank killed outright (the OOM killer, a lost machine) ends the others within a bounded
/// time, and the latest checkpoint is a complete one that resumes.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn a_killed_rank_ends_every_rank_and_the_latest_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut child = long_run(&out);
    wait_for_checkpoint(&out, 4, &mut child);
    let pid = rank_pid(&out, 1).expect("rank 1's process");
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let o = finish(child, Duration::from_secs(60));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    // mpirun names the rank that died; rank 0, stopped by mpirun's SIGTERM, names the step
    assert!(t.contains("process rank 1") && t.contains("rank 0 of 2, step "), "{t}");
    wait_ranks_gone(&out, 2, Duration::from_secs(30));
    let ck = checkpoint::load(&out).expect("a complete latest checkpoint");
    resume_a_few_steps(&out, 1, ck.state.step + 1);
}

/// Ctrl-C on mpirun: every rank stops, and the latest checkpoint is complete and resumes.
#[test]
#[ignore = "needs mpirun and latent-mpi (.ci/run)"]
fn ctrl_c_on_mpirun_leaves_the_last_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let mut child = long_run(&out);
    wait_for_checkpoint(&out, 4, &mut child);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let o = finish(child, Duration::from_secs(60));
    wait_ranks_gone(&out, 2, Duration::from_secs(30));
    let ck = checkpoint::load(&out).unwrap_or_else(|e| panic!("{e:#}\n{}", text(&o)));
    assert!(ck.state.step >= 4);
    resume_a_few_steps(&out, 2, ck.state.step + 2);
}
