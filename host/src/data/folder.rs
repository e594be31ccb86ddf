//! `folder:DIR` (ImageFolder) and `images:DIR` (unlabeled images).
//!
//! - `folder:DIR`: one subfolder per class, `DIR/<class>/*.{png,jpg,jpeg}`; class labels follow
//!   the sorted folder names (torchvision's `ImageFolder`). When `DIR/train` exists, it and
//!   `DIR/test` (optional) are read as the two splits, with the training split's classes.
//! - `images:DIR`: every image under `DIR`, recursively, unlabeled.
//!
//! Files are read in sorted path order and decoded in parallel. The shape is the first image's:
//! 1 channel when it is grey (L, LA, 16-bit grey), else 3 (RGB; alpha dropped); every other
//! image is converted to that channel count and must have the same height and width (an error
//! naming the file otherwise). An undecodable image is an error naming the file, or, with
//! `skip_bad`, skipped with one warning giving the count and the first failure. A class folder
//! without images is an error naming it.

use super::{name_of, Dataset, Splits};
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// File extensions read as images (case-insensitive).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Every image under `dir`, recursively, in sorted path order. Directory links are followed,
/// but each directory and each image file is taken once, by its canonical path: a link cycle
/// (`ln -s .. d/a/up`) or a second link to the same folder or file adds nothing. How many
/// entries were left out that way is logged once.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut seen_dirs = std::collections::HashSet::new();
    let mut seen_files = std::collections::HashSet::new();
    let mut repeats = 0usize;
    walk(dir, out, &mut seen_dirs, &mut seen_files, &mut repeats)?;
    if repeats > 0 {
        tracing::warn!("{}: {repeats} directory or file links lead to places already read (a link cycle or a second link to the same place); each is read once", dir.display());
    }
    Ok(())
}

fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen_dirs: &mut std::collections::HashSet<PathBuf>,
    seen_files: &mut std::collections::HashSet<PathBuf>,
    repeats: &mut usize,
) -> Result<()> {
    let canon =
        std::fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    if !seen_dirs.insert(canon) {
        *repeats += 1;
        return Ok(());
    }
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            walk(&p, out, seen_dirs, seen_files, repeats)?;
        } else if is_image(&p) {
            let first = std::fs::canonicalize(&p).map_or(true, |c| seen_files.insert(c));
            if first {
                out.push(p);
            } else {
                *repeats += 1;
            }
        }
    }
    Ok(())
}

/// Opens an ImageFolder, with `train/` and `test/` as splits when present.
pub fn open_folder(dir: &Path, skip_bad: bool) -> Result<Splits> {
    let name = name_of(dir);
    let train_dir = dir.join("train");
    if train_dir.is_dir() {
        let train = read_folder(&train_dir, None, &format!("{name}/train"), skip_bad)?;
        let test_dir = dir.join("test");
        let test = if test_dir.is_dir() {
            Some(read_folder(&test_dir, Some(&train.classes), &format!("{name}/test"), skip_bad)?)
        } else {
            None
        };
        return Ok(Splits { train, test });
    }
    Ok(Splits { train: read_folder(dir, None, &name, skip_bad)?, test: None })
}

/// Opens every image under `dir`, unlabeled.
pub fn open_images(dir: &Path, skip_bad: bool) -> Result<Splits> {
    let mut files = Vec::new();
    images_under(dir, &mut files)?;
    ensure!(!files.is_empty(), "no images (.png, .jpg, .jpeg) under {}", dir.display());
    let (train, _) = decode_all(&files, &[], &name_of(dir), skip_bad)?;
    Ok(Splits { train: Dataset { classes: vec![], labels: vec![], ..train }, test: None })
}

/// Reads one ImageFolder split; `classes` fixes the class list (a test split uses the training
/// split's; a class folder it lacks is an error).
pub fn read_folder(
    dir: &Path,
    classes: Option<&[String]>,
    name: &str,
    skip_bad: bool,
) -> Result<Dataset> {
    let folders: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()).collect();
    ensure!(
        !folders.is_empty(),
        "no class folders in {} (expected {}/<class>/*.png)",
        dir.display(),
        dir.display()
    );
    let names: Vec<String> = folders.iter().map(|p| name_of(p)).collect();
    let classes: Vec<String> = classes.map_or_else(|| names.clone(), <[String]>::to_vec);
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (folder, cname) in folders.iter().zip(&names) {
        let Some(label) = classes.iter().position(|c| c == cname) else {
            bail!(
                "class folder {} is not one of the training classes {classes:?}",
                folder.display()
            );
        };
        let mut found = Vec::new();
        images_under(folder, &mut found)?;
        ensure!(
            !found.is_empty(),
            "class folder {} holds no images (.png, .jpg, .jpeg)",
            folder.display()
        );
        labels.extend(vec![label as i64; found.len()]);
        files.extend(found);
    }
    let (mut d, _) = decode_all(&files, &labels, name, skip_bad)?;
    d.classes = classes;
    Ok(d)
}

/// Decodes `files` (with `labels`, or none) into one dataset; returns it and the number of
/// files skipped as undecodable (0 unless `skip_bad`).
pub fn decode_all(
    files: &[PathBuf],
    labels: &[i64],
    name: &str,
    skip_bad: bool,
) -> Result<(Dataset, usize)> {
    let decoded: Vec<Result<image::DynamicImage>> = files
        .par_iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            image::load_from_memory(&bytes)
                .with_context(|| format!("cannot decode image {}", p.display()))
        })
        .collect();
    let mut shape: Option<[usize; 3]> = None;
    let mut d = Dataset { name: name.to_string(), ..Default::default() };
    let mut skipped = 0usize;
    let mut first_skip = None;
    for (i, (img, path)) in decoded.into_iter().zip(files).enumerate() {
        let img = match img {
            Ok(img) => img,
            Err(e) if skip_bad => {
                skipped += 1;
                first_skip.get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
            Err(e) => {
                return Err(e.context("set data.skip_bad_images = true to skip undecodable images"))
            }
        };
        let s = *shape.get_or_insert_with(|| {
            let grey = matches!(
                img.color(),
                image::ColorType::L8
                    | image::ColorType::La8
                    | image::ColorType::L16
                    | image::ColorType::La16
            );
            [if grey { 1 } else { 3 }, img.height() as usize, img.width() as usize]
        });
        ensure!(
            (img.height() as usize, img.width() as usize) == (s[1], s[2]),
            "image {} is {}x{} but the first image is {}x{} (all images of a dataset need one size)",
            path.display(),
            img.width(),
            img.height(),
            s[2],
            s[1]
        );
        if s[0] == 1 {
            d.images.extend_from_slice(img.to_luma8().as_raw());
        } else {
            let rgb = img.to_rgb8();
            let hw = s[1] * s[2];
            let start = d.images.len();
            d.images.resize(start + 3 * hw, 0);
            let dst = &mut d.images[start..];
            for (k, px) in rgb.as_raw().chunks_exact(3).enumerate() {
                dst[k] = px[0];
                dst[hw + k] = px[1];
                dst[2 * hw + k] = px[2];
            }
        }
        if !labels.is_empty() {
            d.labels.push(labels[i]);
        }
    }
    if skipped > 0 {
        tracing::warn!(
            "skipped {skipped} undecodable image(s) of {} in '{name}'; first: {}",
            files.len(),
            first_skip.unwrap_or_default()
        );
    }
    let Some(s) = shape else {
        bail!("no decodable images in '{name}' ({} files, {skipped} skipped)", files.len())
    };
    d.shape = s;
    Ok((d, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cifar10-png")
    }

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            let to = dst.join(p.file_name().unwrap());
            if p.is_dir() {
                copy_dir(&p, &to)
            } else {
                std::fs::copy(&p, &to).unwrap();
            }
        }
    }

    #[test]
    fn reads_the_cifar10_png_folder_and_matches_the_binary_fixture() {
        let s = crate::data::open(&format!("folder:{}", fixture().display())).unwrap();
        assert_eq!((s.train.len(), s.train.shape), (20, [3, 32, 32]));
        assert_eq!(
            s.train.classes,
            ["airplane", "automobile", "cat", "dog", "frog", "horse", "ship", "truck"]
        );
        assert!(s.test.is_none());
        // same pixels as the CIFAR binary written from the same PNGs: airplane/cifar10_03.png is record 3
        let bin = crate::data::open(&format!(
            "cifar10:{}",
            fixture().with_file_name("cifar10-bin").display()
        ))
        .unwrap();
        assert_eq!(s.train.image(0), bin.train.image(3));
        let u = crate::data::open(&format!("images:{}", fixture().display())).unwrap();
        assert_eq!((u.train.len(), u.train.labels.len(), u.train.classes.len()), (20, 0, 0));
    }

    #[test]
    fn train_test_subfolders_are_splits() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture(), &dir.path().join("train"));
        copy_dir(&fixture().join("ship"), &dir.path().join("test/ship"));
        let s = open_folder(dir.path(), false).unwrap();
        let test = s.test.unwrap();
        assert_eq!((s.train.len(), test.len()), (20, 4));
        assert_eq!(test.labels, vec![6; 4]);
        assert_eq!(test.classes, s.train.classes);
    }

    #[test]
    fn symlink_cycles_neither_hang_nor_duplicate_the_data() {
        // regression: two links to the parent made the walk exponential (a hang); one link to
        // the folder itself turned 80 images into 1,680
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("d/a");
        copy_dir(&fixture().join("cat"), &a);
        let n = std::fs::read_dir(&a).unwrap().count();
        std::os::unix::fs::symlink("..", a.join("u1")).unwrap();
        std::os::unix::fs::symlink("..", a.join("u2")).unwrap();
        std::os::unix::fs::symlink(".", a.join("loop")).unwrap();
        std::os::unix::fs::symlink(a.join("cifar10_00.png"), a.join("again.png")).unwrap();
        let t = std::time::Instant::now();
        let s = crate::data::open(&format!("images:{}", dir.path().join("d").display())).unwrap();
        assert_eq!(s.train.len(), n, "each image once");
        assert!(t.elapsed().as_secs() < 10);
        // a link to a folder outside is followed once
        let b = dir.path().join("b");
        copy_dir(&fixture().join("dog"), &b);
        std::os::unix::fs::symlink(&b, a.join("dogs")).unwrap();
        std::os::unix::fs::symlink(&b, a.join("dogs2")).unwrap();
        let s = crate::data::open(&format!("images:{}", dir.path().join("d").display())).unwrap();
        assert_eq!(s.train.len(), n + std::fs::read_dir(&b).unwrap().count());
    }

    #[test]
    fn empty_class_folder_and_undecodable_image_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture(), dir.path());
        std::fs::create_dir(dir.path().join("zebra")).unwrap();
        let e = format!("{:#}", open_folder(dir.path(), false).unwrap_err());
        assert!(e.contains("zebra") && e.contains("no images"), "{e}");
        std::fs::remove_dir(dir.path().join("zebra")).unwrap();
        std::fs::write(dir.path().join("cat/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = format!("{:#}", open_folder(dir.path(), false).unwrap_err());
        assert!(
            e.contains("broken.png") && e.contains("data.skip_bad_images"),
            "the file and the key: {e}"
        );
        // with skip_bad: skipped and counted
        let files: Vec<PathBuf> =
            vec![dir.path().join("cat/broken.png"), dir.path().join("cat/cifar10_00.png")];
        let (d, skipped) = decode_all(&files, &[2, 2], "t", true).unwrap();
        assert_eq!((d.len(), skipped, d.labels.clone()), (1, 1, vec![2]));
        let s = crate::data::open_with(
            &format!("folder:{}", dir.path().display()),
            &crate::data::OpenOptions { skip_bad: true },
        )
        .unwrap();
        assert_eq!(s.train.len(), 20);
    }
}
