//! `cifar10:DIR`: CIFAR-10's binary version (`cifar-10-batches-bin`).
//!
//! The training split is every `data_batch_*.bin` (in name order, at least one), the test
//! split `test_batch.bin` when present. Class names come from `batches.meta.txt` when present,
//! CIFAR-10's ten names otherwise.
//!
//! # Format
//! ```text
//! record  = label (1 byte, 0..9) · R (1024) · G (1024) · B (1024)    rows of 32, top first
//! file    = records back to back (10,000 in the real batches)
//! ```
//! The pixel planes are already `[3, 32, 32]`. A file whose length is not a whole number of
//! 3,073-byte records is truncated: an error naming it.

use super::{name_of, Dataset, Splits};
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// CIFAR-10's class names, by label.
pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Bytes per record: a label and a 3×32×32 image.
pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads the splits in `dir`.
pub fn open(dir: &Path) -> Result<Splits> {
    let mut batches: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("data_batch_") && n.ends_with(".bin"))
        })
        .collect();
    batches.sort();
    ensure!(
        !batches.is_empty(),
        "no data_batch_*.bin in {} (expected CIFAR-10's binary version)",
        dir.display()
    );
    let meta = dir.join("batches.meta.txt");
    let classes: Vec<String> = if meta.is_file() {
        let text = std::fs::read_to_string(&meta)
            .with_context(|| format!("cannot read {}", meta.display()))?;
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    } else {
        CLASSES.iter().map(|s| s.to_string()).collect()
    };
    let name = name_of(dir);
    let mut train = Dataset {
        name: format!("{name}/train"),
        shape: [3, 32, 32],
        classes: classes.clone(),
        ..Default::default()
    };
    for b in &batches {
        read_batch(b, &mut train)?;
    }
    let test_path = dir.join("test_batch.bin");
    let test = if test_path.is_file() {
        let mut t = Dataset {
            name: format!("{name}/test"),
            shape: [3, 32, 32],
            classes,
            ..Default::default()
        };
        read_batch(&test_path, &mut t)?;
        Some(t)
    } else {
        None
    };
    Ok(Splits { train, test })
}

/// Appends the records of one batch file to `d`.
pub fn read_batch(path: &Path, d: &mut Dataset) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(!bytes.is_empty() && bytes.len() % RECORD == 0, "{} is truncated or not a CIFAR-10 batch: {} bytes is not a whole number of {RECORD}-byte records", path.display(), bytes.len());
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = rec[0] as usize;
        ensure!(
            label < d.classes.len(),
            "{}: record {i} has label {label} but there are {} classes",
            path.display(),
            d.classes.len()
        );
        d.labels.push(label as i64);
        d.images.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cifar10_binary_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cifar10-bin");
        let s = crate::data::open(&format!("cifar10:{}", dir.display())).unwrap();
        let test = s.test.as_ref().unwrap();
        assert_eq!((s.train.len(), test.len(), s.train.shape), (16, 4, [3, 32, 32]));
        // labels from the file names foolbox/data/cifar10_NN_L.png, NN = 00..19
        assert_eq!(s.train.labels, vec![3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8]);
        assert_eq!(test.labels, vec![5, 7, 8, 6]);
        assert_eq!(s.train.classes[3], "cat");
    }

    #[test]
    fn truncated_batch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/cifar10-bin/data_batch_1.bin");
        let bytes = std::fs::read(src).unwrap();
        std::fs::write(dir.path().join("data_batch_1.bin"), &bytes[..bytes.len() - 100]).unwrap();
        let e = format!("{:#}", open(dir.path()).unwrap_err());
        assert!(e.contains("data_batch_1.bin") && e.contains("truncated"), "{e}");
        let e = format!("{:#}", open(tempfile::tempdir().unwrap().path()).unwrap_err());
        assert!(e.contains("no data_batch_"), "{e}");
    }
}
