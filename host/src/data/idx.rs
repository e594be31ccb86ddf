//! `idx:DIR`: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...).
//!
//! Reads `train-images-idx3-ubyte` and `train-labels-idx1-ubyte` (the training split) and,
//! when present, `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte` (the test split); each
//! raw or gzip'd (`.gz`), with `-idx3-ubyte` or `.idx3-ubyte` spellings.
//!
//! # Format
//! ```text
//! magic   0x00 0x00 0x08 ndim        0x08: unsigned bytes; ndim 3 (images) or 1 (labels)
//! dims    ndim big-endian u32        [N, H, W] or [N]
//! data    N·H·W (or N) bytes
//! ```
//! A short file (truncated data, a cut gzip stream) is an error naming the file. Class names
//! are Fashion-MNIST's when the directory's path mentions "fashion", digits otherwise.

use super::{name_of, Dataset, Splits};
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Fashion-MNIST's class names, by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Reads the splits in `dir`.
pub fn open(dir: &Path) -> Result<Splits> {
    let fashion = dir.to_string_lossy().to_lowercase().contains("fashion");
    let name = name_of(dir);
    let train = split(dir, "train", &name, fashion)?.with_context(|| {
        format!(
            "no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] in {}",
            dir.display()
        )
    })?;
    let test = split(dir, "t10k", &name, fashion)?;
    Ok(Splits { train, test })
}

fn find(dir: &Path, prefix: &str, what: &str, n: u8) -> Option<PathBuf> {
    for sep in ["-", "."] {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{prefix}-{what}{sep}idx{n}-ubyte{ext}"));
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn split(dir: &Path, prefix: &str, name: &str, fashion: bool) -> Result<Option<Dataset>> {
    let (imgs, labs) = (find(dir, prefix, "images", 3), find(dir, prefix, "labels", 1));
    let (imgs, labs) = match (imgs, labs) {
        (Some(i), Some(l)) => (i, l),
        (None, None) => return Ok(None),
        (Some(i), None) => {
            bail!("{} has no labels file beside it ({prefix}-labels-idx1-ubyte[.gz])", i.display())
        }
        (None, Some(l)) => {
            bail!("{} has no images file beside it ({prefix}-images-idx3-ubyte[.gz])", l.display())
        }
    };
    let (dims, images) = read_idx(&imgs)?;
    ensure!(dims.len() == 3, "{}: expected 3 dimensions [N, H, W], got {dims:?}", imgs.display());
    let (ldims, labels) = read_idx(&labs)?;
    ensure!(ldims.len() == 1, "{}: expected 1 dimension [N], got {ldims:?}", labs.display());
    ensure!(
        ldims[0] == dims[0],
        "{} holds {} images but {} holds {} labels",
        imgs.display(),
        dims[0],
        labs.display(),
        ldims[0]
    );
    let n_classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1).max(10);
    let classes = if fashion && n_classes == 10 {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n_classes).map(|d| d.to_string()).collect()
    };
    let split = if prefix == "train" { "train" } else { "test" };
    Ok(Some(Dataset {
        name: format!("{name}/{split}"),
        shape: [1, dims[1], dims[2]],
        images,
        labels: labels.into_iter().map(i64::from).collect(),
        classes,
    }))
}

/// Reads one IDX file of unsigned bytes: its dimensions and data.
///
/// The header is read first and the data after it is read only up to the size it announces
/// (plus one byte, to notice trailing data): a gzip bomb, or a header announcing more than
/// memory holds, is an error naming the file, not an out-of-memory abort.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let what = if gz { "is not a complete gzip file (truncated?)" } else { "cannot be read" };
    let mut read_up_to = |n: usize, buf: &mut Vec<u8>| -> Result<()> {
        (&mut r)
            .take(n as u64)
            .read_to_end(buf)
            .map(|_| ())
            .with_context(|| format!("{} {what}", path.display()))
    };
    let mut head = Vec::new();
    read_up_to(4, &mut head)?;
    ensure!(
        head.len() >= 4,
        "{} is truncated: {} bytes, too short for an IDX header",
        path.display(),
        head.len()
    );
    ensure!(
        head[0] == 0 && head[1] == 0,
        "{} is not an IDX file (magic {:02x?})",
        path.display(),
        &head[..4]
    );
    ensure!(
        head[2] == 0x08,
        "{}: IDX data type 0x{:02x} is not unsigned bytes (0x08)",
        path.display(),
        head[2]
    );
    let nd = head[3] as usize;
    read_up_to(4 * nd, &mut head)?;
    ensure!(
        head.len() >= 4 + 4 * nd,
        "{} is truncated: {} bytes, too short for its {nd} dimensions",
        path.display(),
        head.len()
    );
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(head[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    // checked: a header of 2³²−1 × 2³²−1 × 2³²−1 overflowed usize (found by fuzzing)
    let want = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).with_context(|| {
        format!(
            "{}: its header announces {dims:?}, more bytes than can be addressed",
            path.display()
        )
    })?;
    let mut data = Vec::new();
    data.try_reserve_exact(want.saturating_add(1)).map_err(|_| {
        anyhow::anyhow!(
            "{}: its header announces {dims:?}, {want} bytes of data, more than memory holds",
            path.display()
        )
    })?;
    read_up_to(want.saturating_add(1), &mut data)?;
    let have = data.len();
    ensure!(
        have >= want,
        "{} is truncated: its header says {dims:?} ({want} bytes of data) but it holds {have}",
        path.display()
    );
    if have > want {
        let mut rest = Vec::new();
        let _ = (&mut r).take(1 << 20).read_to_end(&mut rest);
        bail!(
            "{} has {}{} bytes after the {dims:?} its header announces",
            path.display(),
            1 + rest.len(),
            if rest.len() == 1 << 20 { " or more" } else { "" }
        );
    }
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_small_idx_and_names_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte"), idx(&[2, 2, 3], &[1; 12]))
            .unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx(&[2], &[0, 3])).unwrap();
        let s = open(dir.path()).unwrap();
        assert_eq!(
            (s.train.len(), s.train.shape, s.train.labels.clone()),
            (2, [1, 2, 3], vec![0, 3])
        );
        assert!(s.test.is_none());
        // cut the image file: the error names it
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte"),
            &idx(&[2, 2, 3], &[1; 12])[..20],
        )
        .unwrap();
        let e = format!("{:#}", open(dir.path()).unwrap_err());
        assert!(e.contains("train-images-idx3-ubyte") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn a_gzip_bomb_is_read_only_as_far_as_its_header_announces() {
        // regression: the whole stream was inflated before the header was checked ("truncated?"
        // when memory ran out); now 200 MB of zeros behind a 2x2 header stop at the header's size
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bomb-idx3-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::best(),
        );
        gz.write_all(&idx(&[2, 2], &[1, 2, 3, 4])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20, "a real bomb: small on disk");
        let e = format!("{:#}", read_idx(&p).unwrap_err());
        assert!(
            e.contains("bomb-idx3-ubyte.gz") && e.contains("or more bytes after the [2, 2]"),
            "{e}"
        );
    }

    #[test]
    fn truncated_gzip_names_the_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&idx(&[50, 28, 28], &vec![7; 50 * 784])).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx(&[50], &[1; 50])).unwrap();
        let e = format!("{:#}", open(dir.path()).unwrap_err());
        assert!(e.contains("train-images-idx3-ubyte.gz"), "{e}");
    }

    #[test]
    fn fashion_mnist_when_installed() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.join("train-images-idx3-ubyte.gz").is_file() {
            println!("skipping: Fashion-MNIST is not installed at {} (apt-get install dataset-fashion-mnist)", dir.display());
            return;
        }
        let s = crate::data::open(&format!("idx:{}", dir.display())).unwrap();
        let test = s.test.as_ref().unwrap();
        assert_eq!((s.train.len(), test.len(), s.train.shape), (60000, 10000, [1, 28, 28]));
        assert_eq!(s.train.classes[9], "Ankle boot");
        assert_eq!(s.train.class_counts(), vec![6000; 10]);
        assert_eq!(test.class_counts(), vec![1000; 10]);
    }
}
