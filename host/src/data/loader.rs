//! The loader: batches of augmented views, built on background threads, reproducibly.
//!
//! For each epoch the loader fixes the batches' image indices up front ([`epoch_batches`]):
//! - [`Sampler::Shuffle`] (default): a permutation drawn from ChaCha8 seeded with
//!   `(seed, epoch)`, cut into batches of `batch_size`;
//! - [`Sampler::Sequential`]: `0..N` in order;
//! - [`Sampler::ClassBalanced`] (P×K, for objectives that need labels, e.g. triplet losses):
//!   each batch holds `classes` distinct classes drawn at random and `per_class` images of
//!   each, drawn without replacement from a per-class shuffled pool that is reshuffled when it
//!   runs out (a class with fewer than K images repeats some); `⌊N / (P·K)⌋` batches per
//!   epoch; `batch_size` is ignored (it is P·K).
//!
//! With `drop_last` (default) a final short batch is dropped. `threads` workers (0: one per
//! core) then build batches `t, t+T, t+2T, ...` each, into a bounded queue of `prefetch`
//! batches per worker; the iterator reads them back in order. A batch decodes its images
//! (`u8 / 255` → f32 in [0, 1], `[B, C, H, W]`) and applies each view's [`Augment`] with one
//! seed per image:
//! ```text
//! seed(sample) = splitmix64 chain of (seed, epoch, image index, view)      see sample_seed
//! ```
//! so a view depends only on (seed, epoch, image, view): the same batches and views come out
//! whatever the number of threads or the batch an image lands in. An empty list of views gives
//! one view of the plain decoded images.
//!
//! [`eval_batches`] is the plain in-order iterator for evaluation and embedding: no
//! augmentation, every image once, the last batch possibly short.

use super::Dataset;
use crate::plugins::Augment;
use anyhow::{anyhow, bail, ensure, Result};
use latent_sdk::kit::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One batch: a tensor per view, the labels (empty when unlabeled) and the dataset indices
/// of the images in the views (in a data-parallel run, the views and indices are this rank's
/// slice, the labels the whole batch's).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[B, C, H, W]` per view (the view's output shape).
    pub views: Vec<Tensor>,
    /// One label per image; empty for an unlabeled dataset.
    pub labels: Vec<i64>,
    /// The images' indices in the dataset.
    pub indices: Vec<usize>,
}

/// How an epoch's images are grouped into batches.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Sampler {
    /// A seeded permutation per epoch.
    #[default]
    Shuffle,
    /// `0..N` in order.
    Sequential,
    /// P classes × K images per batch (needs labels).
    ClassBalanced {
        /// P: distinct classes per batch.
        classes: usize,
        /// K: images per class.
        per_class: usize,
    },
}

/// Loader settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (ignored by [`Sampler::ClassBalanced`]), default 256.
    pub batch_size: usize,
    /// Seed of shuffling and augmentation, default 0.
    pub seed: u64,
    /// Epoch number, mixed into every seed, default 0.
    pub epoch: u64,
    /// Worker threads; 0 (default): one per core.
    pub threads: usize,
    /// Batches queued per worker, default 2.
    pub prefetch: usize,
    /// Drop a final short batch, default true.
    pub drop_last: bool,
    /// Batch composition, default [`Sampler::Shuffle`].
    pub sampler: Sampler,
    /// `(rank, ranks)` of a data-parallel run, default `(0, 1)`: the batches are the global
    /// ones, and this rank builds views of its slice `rank·B/ranks..(rank+1)·B/ranks` of each
    /// (the labels stay the whole batch's).
    pub shard: (usize, usize),
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 256,
            seed: 0,
            epoch: 0,
            threads: 0,
            prefetch: 2,
            drop_last: true,
            sampler: Sampler::Shuffle,
            shard: (0, 1),
        }
    }
}

/// splitmix64's finaliser: a bijective 64-bit mix.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The augmentation seed of view `view` of image `index` in `epoch`.
pub fn sample_seed(seed: u64, epoch: u64, index: usize, view: usize) -> u64 {
    splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ index as u64) ^ view as u64)
}

const SHUFFLE_STREAM: usize = usize::MAX;

fn epoch_rng(cfg: &LoaderConfig) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(sample_seed(cfg.seed, cfg.epoch, SHUFFLE_STREAM, 0))
}

/// The image indices of every batch of the epoch `cfg.epoch`.
pub fn epoch_batches(data: &Dataset, cfg: &LoaderConfig) -> Result<Vec<Vec<usize>>> {
    let n = data.len();
    ensure!(n > 0, "dataset '{}' is empty", data.name);
    let cut = |order: Vec<usize>, b: usize| -> Result<Vec<Vec<usize>>> {
        ensure!(b > 0, "batch_size must be at least 1");
        let mut out: Vec<Vec<usize>> = order.chunks(b).map(<[usize]>::to_vec).collect();
        if cfg.drop_last && out.last().is_some_and(|l| l.len() < b) {
            out.pop();
        }
        ensure!(
            !out.is_empty(),
            "dataset '{}' has {n} images, fewer than one batch of {b} (drop_last is on)",
            data.name
        );
        Ok(out)
    };
    match cfg.sampler {
        Sampler::Sequential => cut((0..n).collect(), cfg.batch_size),
        Sampler::Shuffle => {
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut epoch_rng(cfg));
            cut(order, cfg.batch_size)
        }
        Sampler::ClassBalanced { classes: p, per_class: k } => {
            ensure!(
                data.is_labeled(),
                "class-balanced sampling needs labels but dataset '{}' has none",
                data.name
            );
            ensure!(
                p > 0 && k > 0,
                "class-balanced sampling needs classes and per_class of at least 1, got {p} × {k}"
            );
            let mut rng = epoch_rng(cfg);
            let mut pools: Vec<Vec<usize>> = vec![vec![]; data.classes.len()];
            data.labels.iter().enumerate().for_each(|(i, &l)| pools[l as usize].push(i));
            let present: Vec<usize> = (0..pools.len()).filter(|&c| !pools[c].is_empty()).collect();
            ensure!(present.len() >= p, "class-balanced sampling wants {p} classes per batch but dataset '{}' has {} non-empty classes", data.name, present.len());
            let batches = n / (p * k);
            ensure!(
                batches > 0,
                "dataset '{}' has {n} images, fewer than one batch of {p} × {k}",
                data.name
            );
            pools.iter_mut().for_each(|pool| pool.shuffle(&mut rng));
            let mut cursor = vec![0usize; pools.len()];
            let mut out = Vec::with_capacity(batches);
            for _ in 0..batches {
                let mut batch = Vec::with_capacity(p * k);
                for &c in present.choose_multiple(&mut rng, p).collect::<Vec<_>>() {
                    for _ in 0..k {
                        if cursor[c] == pools[c].len() {
                            pools[c].shuffle(&mut rng);
                            cursor[c] = 0;
                        }
                        batch.push(pools[c][cursor[c]]);
                        cursor[c] += 1;
                    }
                }
                out.push(batch);
            }
            Ok(out)
        }
    }
}

/// The images `indices` as `[B, C, H, W]` f32 in [0, 1].
pub fn decode(data: &Dataset, indices: &[usize]) -> Tensor {
    let [c, h, w] = data.shape;
    let mut x = Vec::with_capacity(indices.len() * c * h * w);
    for &i in indices {
        x.extend(data.image(i).iter().map(|&v| v as f32 * (1.0 / 255.0)));
    }
    Tensor::new(vec![indices.len(), c, h, w], x)
}

fn labels_of(data: &Dataset, indices: &[usize]) -> Vec<i64> {
    if data.is_labeled() {
        indices.iter().map(|&i| data.labels[i]).collect()
    } else {
        vec![]
    }
}

/// The batch of `indices` as the loader makes it for `cfg.epoch`: every view of every image
/// augmented with its [`sample_seed`].
pub fn build_batch(
    data: &Dataset,
    views: &[Augment],
    cfg: &LoaderConfig,
    indices: Vec<usize>,
) -> Result<Batch> {
    let labels = labels_of(data, &indices);
    let (rank, ranks) = cfg.shard;
    ensure!(
        ranks >= 1 && rank < ranks && indices.len().is_multiple_of(ranks),
        "a batch of {} images does not split evenly among {ranks} ranks",
        indices.len()
    );
    let per = indices.len() / ranks;
    let indices = indices[rank * per..(rank + 1) * per].to_vec();
    let x = decode(data, &indices);
    let mut out = Vec::with_capacity(views.len().max(1));
    if views.is_empty() {
        out.push(x);
    } else {
        for (v, aug) in views.iter().enumerate() {
            let seeds: Vec<u64> =
                indices.iter().map(|&i| sample_seed(cfg.seed, cfg.epoch, i, v)).collect();
            out.push(aug.apply(x.clone(), &seeds)?);
        }
    }
    Ok(Batch { views: out, labels, indices })
}

/// Batches of one epoch, built by background threads, yielded in order.
pub struct Loader {
    batches: usize,
    next: usize,
    queues: Vec<Receiver<Result<Batch>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Starts the workers for epoch `cfg.epoch` of `data`, one [`Augment`] per view.
    pub fn new(data: Arc<Dataset>, views: Vec<Augment>, cfg: &LoaderConfig) -> Result<Loader> {
        for v in &views {
            v.output_shape(data.shape).map_err(|e| {
                anyhow!(
                    "augmentation '{}' cannot take the images of '{}' ({:?}): {e:#}",
                    v.name,
                    data.name,
                    data.shape
                )
            })?;
        }
        let plan = epoch_batches(&data, cfg)?;
        let batches = plan.len();
        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            t => t,
        }
        .min(batches)
        .max(1);
        let views = Arc::new(views);
        let plan = Arc::new(plan);
        let mut queues = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, rx) = sync_channel::<Result<Batch>>(cfg.prefetch.max(1));
            let (data, views, plan, cfg) = (data.clone(), views.clone(), plan.clone(), cfg.clone());
            let h = std::thread::Builder::new().name(format!("latent-loader-{t}")).spawn(
                move || {
                    for b in (t..plan.len()).step_by(threads) {
                        let r = build_batch(&data, &views, &cfg, plan[b].clone());
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            return; // the loader was dropped, or this error ends the epoch
                        }
                    }
                },
            )?;
            queues.push(rx);
            workers.push(h);
        }
        Ok(Loader { batches, next: 0, queues, workers })
    }

    /// Batches in this epoch.
    pub fn len(&self) -> usize {
        self.batches
    }

    /// True when the epoch has no batch (never: construction refuses it).
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.batches {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let r = match self.queues[b % self.queues.len()].recv() {
            Ok(r) => r,
            Err(_) => Err(anyhow!(
                "loader worker {} stopped before batch {b} (it panicked)",
                b % self.queues.len()
            )),
        };
        if r.is_err() {
            self.next = self.batches;
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.batches - self.next;
        (n, Some(n))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.queues.clear(); // unblocks workers waiting to send
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// In-order batches of plain decoded images (one view), every image once.
pub struct EvalBatches<'a> {
    data: &'a Dataset,
    batch_size: usize,
    next: usize,
}

/// Iterates over `data` in order, `batch_size` images at a time, without augmentation.
pub fn eval_batches(data: &Dataset, batch_size: usize) -> Result<EvalBatches<'_>> {
    if batch_size == 0 {
        bail!("batch_size must be at least 1");
    }
    Ok(EvalBatches { data, batch_size, next: 0 })
}

impl Iterator for EvalBatches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n = self.data.len();
        if self.next >= n {
            return None;
        }
        let indices: Vec<usize> = (self.next..(self.next + self.batch_size).min(n)).collect();
        self.next += indices.len();
        Some(Batch {
            views: vec![decode(self.data, &indices)],
            labels: labels_of(self.data, &indices),
            indices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, classes: usize) -> Dataset {
        Dataset {
            name: "toy".into(),
            shape: [1, 2, 2],
            images: (0..n * 4).map(|v| (v % 256) as u8).collect(),
            labels: (0..n).map(|i| (i % classes) as i64).collect(),
            classes: (0..classes).map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn shuffle_is_seeded_per_epoch_and_drop_last_holds() {
        let d = toy(10, 2);
        let cfg = LoaderConfig { batch_size: 3, ..Default::default() };
        let a = epoch_batches(&d, &cfg).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a, epoch_batches(&d, &cfg).unwrap());
        assert_ne!(a, epoch_batches(&d, &LoaderConfig { epoch: 1, ..cfg.clone() }).unwrap());
        let mut all: Vec<usize> = a.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 9);
        let keep = epoch_batches(
            &d,
            &LoaderConfig { drop_last: false, sampler: Sampler::Sequential, ..cfg },
        )
        .unwrap();
        assert_eq!(keep, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]);
    }

    #[test]
    fn class_balanced_batches_hold_p_classes_times_k() {
        let d = toy(60, 5);
        let cfg = LoaderConfig {
            sampler: Sampler::ClassBalanced { classes: 3, per_class: 4 },
            ..Default::default()
        };
        let b = epoch_batches(&d, &cfg).unwrap();
        assert_eq!(b.len(), 5);
        for batch in &b {
            assert_eq!(batch.len(), 12);
            let mut per = std::collections::BTreeMap::new();
            batch.iter().for_each(|&i| *per.entry(d.labels[i]).or_insert(0) += 1);
            assert_eq!(per.len(), 3);
            assert!(per.values().all(|&c| c == 4));
        }
        let unl = Dataset { labels: vec![], classes: vec![], ..toy(60, 5) };
        assert!(epoch_batches(&unl, &cfg).is_err());
        assert!(epoch_batches(&toy(60, 2), &cfg).is_err());
    }

    #[test]
    fn eval_batches_cover_everything_in_order() {
        let d = toy(5, 2);
        let b: Vec<Batch> = eval_batches(&d, 2).unwrap().collect();
        assert_eq!(
            b.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(b[2].views[0].shape, vec![1, 1, 2, 2]);
        assert_eq!(b[0].views[0].data[1], 1.0 / 255.0);
        assert_eq!(b[1].labels, vec![0, 1]);
    }

    #[test]
    fn plain_loader_without_views_yields_decoded_images() {
        let d = Arc::new(toy(8, 2));
        let cfg = LoaderConfig {
            batch_size: 4,
            threads: 2,
            sampler: Sampler::Sequential,
            ..Default::default()
        };
        let b: Vec<Batch> =
            Loader::new(d.clone(), vec![], &cfg).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].indices, vec![4, 5, 6, 7]);
        assert_eq!(b[1].views[0], decode(&d, &[4, 5, 6, 7]));
    }

    #[test]
    fn seeds_differ_across_views_images_and_epochs() {
        let s = sample_seed(1, 0, 5, 0);
        assert_ne!(s, sample_seed(1, 0, 5, 1));
        assert_ne!(s, sample_seed(1, 0, 6, 0));
        assert_ne!(s, sample_seed(1, 1, 5, 0));
        assert_ne!(s, sample_seed(2, 0, 5, 0));
    }
}
