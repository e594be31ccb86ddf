//! Datasets and the data loader.
//!
//! A [`Dataset`] is a set of same-shaped u8 images (`[C, H, W]`, C = 1 or 3) with optional
//! labels; [`open`] reads one from a source string and returns its [`Splits`]:
//!
//! | source | reads |
//! |---|---|
//! | `embedded:mnist-5k` (default, also `""`) | 5,000 real MNIST digits compiled into the binary ([`embedded`]) |
//! | `idx:DIR` | MNIST / Fashion-MNIST IDX files `train-*` and `t10k-*`, raw or `.gz` ([`idx`]) |
//! | `cifar10:DIR` | CIFAR-10 binary `data_batch_*.bin` and `test_batch.bin` ([`cifar`]) |
//! | `folder:DIR` | ImageFolder `DIR/<class>/*.png|jpg`; `DIR/train`, `DIR/test` as splits when present ([`folder`]) |
//! | `images:DIR` | unlabeled images anywhere under `DIR` ([`folder`]) |
//!
//! Embedded split: per class, the first 400 images (in file order) train, the last 100 test
//! (4,000 / 1,000). Bad data ends in an error naming the file (truncated IDX or CIFAR files,
//! undecodable images, empty class folders); with [`OpenOptions::skip_bad`], single
//! undecodable images in a folder are skipped instead, with one warning giving their count.
//!
//! [`loader`] turns a dataset into batches of augmented views on background threads,
//! reproducibly (the same seed gives the same batches whatever the thread count).

pub mod cifar;
pub mod embedded;
pub mod experiment;
pub mod folder;
pub mod idx;
pub mod loader;

pub use experiment::{build_views, loader_config, open_data, recipe_warning, view_shape};
pub use loader::{eval_batches, sample_seed, Batch, EvalBatches, Loader, LoaderConfig, Sampler};

use anyhow::{bail, ensure, Result};

/// Images of one shape with optional labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// A short name (`mnist-5k`, the directory's name, ...).
    pub name: String,
    /// `[C, H, W]` of every image.
    pub shape: [usize; 3],
    /// `len() * C * H * W` bytes, image after image, each `[C, H, W]` row-major.
    pub images: Vec<u8>,
    /// One label per image, in `0..classes.len()`; empty when unlabeled.
    pub labels: Vec<i64>,
    /// Class names, indexed by label; empty when unlabeled.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Keeps only the first `n` images (no-op when `n` is 0 or not smaller than the length).
    pub fn truncate(&mut self, n: usize) {
        if n > 0 && n < self.len() {
            let per = self.image_len();
            self.images.truncate(n * per);
            if !self.labels.is_empty() {
                self.labels.truncate(n);
            }
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match self.image_len() {
            0 => 0,
            n => self.images.len() / n,
        }
    }

    /// True when it holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when every image has a label.
    pub fn is_labeled(&self) -> bool {
        !self.labels.is_empty()
    }

    /// The bytes of image `i`, `[C, H, W]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Checks the invariants: whole images, one label each (or none), labels in range.
    pub fn validate(&self) -> Result<()> {
        let n = self.image_len();
        ensure!(n > 0, "dataset '{}' has an empty image shape {:?}", self.name, self.shape);
        let partial = self.images.len() % n; // (is_multiple_of needs Rust 1.87)
        ensure!(
            partial == 0,
            "dataset '{}' holds {} bytes, not a whole number of {n}-byte images",
            self.name,
            self.images.len()
        );
        ensure!(
            self.labels.is_empty() || self.labels.len() == self.len(),
            "dataset '{}' has {} images but {} labels",
            self.name,
            self.len(),
            self.labels.len()
        );
        if let Some(l) = self.labels.iter().find(|&&l| l < 0 || l as usize >= self.classes.len()) {
            bail!("dataset '{}' has label {l} but {} classes", self.name, self.classes.len());
        }
        Ok(())
    }

    /// Image counts per class (empty when unlabeled).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        self.labels.iter().for_each(|&l| c[l as usize] += 1);
        c
    }
}

/// A training set and, when the source has one, a test set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Splits {
    /// Training images.
    pub train: Dataset,
    /// Test images, when the source has a split.
    pub test: Option<Dataset>,
}

/// How to treat bad data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpenOptions {
    /// Skip single undecodable images in `folder:`/`images:` sources (one warning with their
    /// count) instead of failing. Truncated IDX/CIFAR files always fail.
    pub skip_bad: bool,
}

/// The default source.
pub const DEFAULT_SOURCE: &str = "embedded:mnist-5k";

/// Opens `source` (see the [module docs](self)); bad data is an error.
pub fn open(source: &str) -> Result<Splits> {
    open_with(source, &OpenOptions::default())
}

/// Opens `source` with options.
pub fn open_with(source: &str, opts: &OpenOptions) -> Result<Splits> {
    let source = source.trim();
    let source = if source.is_empty() { DEFAULT_SOURCE } else { source };
    let (kind, arg) = source.split_once(':').unwrap_or((source, ""));
    let splits = match kind {
        "embedded" => embedded::open(arg)?,
        "idx" => idx::open(dir(kind, arg)?)?,
        "cifar10" => cifar::open(dir(kind, arg)?)?,
        "folder" => folder::open_folder(dir(kind, arg)?, opts.skip_bad)?,
        "images" => folder::open_images(dir(kind, arg)?, opts.skip_bad)?,
        _ => bail!("unknown dataset source {source:?}: expected embedded:mnist-5k, idx:DIR, cifar10:DIR, folder:DIR or images:DIR"),
    };
    splits.train.validate()?;
    if let Some(t) = &splits.test {
        t.validate()?;
        ensure!(
            t.shape == splits.train.shape,
            "test images of '{}' have shape {:?} but training images {:?}",
            t.name,
            t.shape,
            splits.train.shape
        );
    }
    Ok(splits)
}

fn dir<'a>(kind: &str, arg: &'a str) -> Result<&'a std::path::Path> {
    ensure!(!arg.is_empty(), "dataset source {kind}: needs a directory, as in {kind}:path/to/dir");
    let p = std::path::Path::new(arg);
    ensure!(p.is_dir(), "dataset directory {} does not exist or is not a directory", p.display());
    Ok(p)
}

/// The last component of `p`, as a dataset name.
fn name_of(p: &std::path::Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_sources_and_missing_dirs_are_refused() {
        let e = open("mnist").unwrap_err().to_string();
        assert!(e.contains("unknown dataset source"), "{e}");
        let e = open("idx:/no/such/dir").unwrap_err().to_string();
        assert!(e.contains("/no/such/dir"), "{e}");
        assert!(open("cifar10:").is_err());
    }
}
