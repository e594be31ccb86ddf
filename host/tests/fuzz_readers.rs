//! Property-based fuzzing of every dataset reader (IDX, CIFAR-10 binary, image
//! folders, the embedded CSV parser). Whatever the bytes on disk, opening a source answers
//! with a valid dataset or an error, never a panic or a hang; a dataset that opens holds whole
//! images and labels in range (every image can be read).
//!
//! Inputs are arbitrary bytes and, more usefully, near-valid files: well-formed headers with
//! edge dimensions (0, 1, 2³²−1), lengths just off, mutated (truncated, byte-flipped) copies of
//! real PNGs, generated PNGs of every colour type and mixed sizes, and the real MNIST CSV with a
//! line mutated. The default case count keeps the suite fast; a long session:
//! `PROPTEST_CASES=20000 cargo test -p latent-host --test fuzz_readers` (figures in
//! docs/RELIABILITY.md). `cargo fuzz` needs a nightly toolchain, which this project does not use.

use latent_host::data::{self, embedded, idx, Dataset, OpenOptions, Splits};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::OnceLock;

/// Every image and label of an opened source can be used.
fn check_opened(s: &Splits) {
    for d in std::iter::once(&s.train).chain(s.test.as_ref()) {
        d.validate().expect("an opened dataset is valid");
        for i in 0..d.len() {
            assert_eq!(d.image(i).len(), d.image_len());
        }
        let _ = d.class_counts();
    }
}

fn open(source: &str, skip_bad: bool) {
    if let Ok(s) = data::open_with(source, &OpenOptions { skip_bad }) {
        check_opened(&s);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

// ------------------------------------------------------------------------------------------
// IDX

fn dim() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 0u32..6, 1 => Just(28u32), 1 => Just(u32::MAX), 1 => Just(1u32 << 16), 1 => any::<u32>()]
}

/// A near-valid IDX file: header fields mostly right, data length close to what it announces.
fn idx_file(want_nd: u8) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![4 => Just(8u8), 1 => any::<u8>()],
        prop_oneof![4 => Just(want_nd), 1 => 0u8..6, 1 => any::<u8>()],
        prop::collection::vec(dim(), 0..6),
        -3i64..3,
        any::<u8>(),
    )
        .prop_map(|(m0, ty, nd, dims, delta, fill)| {
            let mut v = vec![0, m0, ty, nd];
            for d in dims.iter().take(nd as usize) {
                v.extend_from_slice(&d.to_be_bytes());
            }
            let want = dims
                .iter()
                .take(nd as usize)
                .map(|&d| d as u64)
                .try_fold(1u64, |a, d| a.checked_mul(d))
                .unwrap_or(u64::MAX);
            let len = (want.min(4096) as i64 + delta).max(0) as usize;
            v.extend(std::iter::repeat_n(fill, len));
            v
        })
}

fn write_idx(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
    if gz {
        std::fs::write(dir.join(format!("{name}.gz")), gzip(bytes)).unwrap();
    } else {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

// ------------------------------------------------------------------------------------------
// images

fn fixture_png(name: &str) -> &'static [u8] {
    static PNGS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    let all = PNGS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cifar10-png");
        ["cat/cifar10_00.png", "ship/cifar10_01.png"]
            .iter()
            .filter_map(|f| Some((f.to_string(), std::fs::read(dir.join(f)).ok()?)))
            .collect()
    });
    all.iter().find(|(n, _)| n == name).or(all.first()).map(|(_, b)| b.as_slice()).unwrap_or(&[])
}

/// A PNG made by the `image` crate: any size up to 6x6, any common colour type.
fn png(w: u32, h: u32, kind: u8, seed: u8) -> Vec<u8> {
    use image::{DynamicImage, ImageBuffer, ImageFormat};
    let px = |x: u32, y: u32| seed.wrapping_add((x * 7 + y * 13) as u8);
    let img = match kind % 6 {
        0 => DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| image::Luma([px(x, y)]))),
        1 => DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
            image::LumaA([px(x, y), 255])
        })),
        2 => {
            DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| image::Rgb([px(x, y), 1, 2])))
        }
        3 => DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgba([px(x, y), 1, 2, 3])
        })),
        4 => DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| {
            image::Luma([px(x, y) as u16 * 257])
        })),
        _ => DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb([px(x, y) as u16, 9, 9])
        })),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    /// Overwrite the IHDR width and height (bytes 16..24 of a PNG).
    Dims(u32, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        3 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(Mutation::Flip),
        1 => (prop_oneof![Just(0u32), Just(1u32), Just(u32::MAX), Just(1u32 << 20), 0u32..64], prop_oneof![Just(0u32), Just(u32::MAX), 0u32..64])
            .prop_map(|(w, h)| Mutation::Dims(w, h)),
    ]
}

fn mutate(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::None => {}
        Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
        Mutation::Flip(f) => {
            for (i, v) in f {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] = *v;
                }
            }
        }
        Mutation::Dims(w, h) => {
            if b.len() >= 24 {
                b[16..20].copy_from_slice(&w.to_be_bytes());
                b[20..24].copy_from_slice(&h.to_be_bytes());
            }
        }
    }
    b
}

#[derive(Debug, Clone)]
enum ImageFile {
    Fixture(u8, Mutation),
    Made(u32, u32, u8, u8, Mutation),
    Bytes(Vec<u8>),
}

fn image_file() -> impl Strategy<Value = ImageFile> {
    prop_oneof![
        2 => (any::<u8>(), mutation()).prop_map(|(i, m)| ImageFile::Fixture(i, m)),
        3 => (1u32..7, 1u32..7, any::<u8>(), any::<u8>(), mutation()).prop_map(|(w, h, k, s, m)| ImageFile::Made(w, h, k, s, m)),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ImageFile::Bytes),
    ]
}

fn image_bytes(f: &ImageFile) -> Vec<u8> {
    match f {
        ImageFile::Fixture(i, m) => mutate(
            fixture_png(if i % 2 == 0 { "cat/cifar10_00.png" } else { "ship/cifar10_01.png" })
                .to_vec(),
            m,
        ),
        ImageFile::Made(w, h, k, s, m) => mutate(png(*w, *h, *k, *s), m),
        ImageFile::Bytes(b) => b.clone(),
    }
}

const EXT: [&str; 4] = ["png", "jpg", "JPEG", "txt"];

// ------------------------------------------------------------------------------------------
// embedded CSV

fn mnist_csv() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut s = String::new();
        flate2::read::GzDecoder::new(embedded::MNIST_5K_CSV_GZ).read_to_string(&mut s).unwrap();
        s
    })
}

fn csv_line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop_oneof![8 => (0u16..256).prop_map(|v| v.to_string()), 1 => "\\PC{0,4}", 1 => Just("256".to_string()), 1 => Just(" 7 ".to_string())], 780..790)
            .prop_map(|v| v.join(",")),
        1 => "\\PC{0,40}",
    ]
}

proptest! {
    #[test]
    fn idx_files_of_any_bytes_are_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..64), gz in any::<bool>(), cut_gz in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let name = if gz { "train-images-idx3-ubyte.gz" } else { "train-images-idx3-ubyte" };
        let mut b = if gz && !cut_gz { gzip(&bytes) } else { bytes };
        if gz && cut_gz { b = gzip(&b); b.truncate(b.len() / 2); }
        let p = dir.path().join(name);
        std::fs::write(&p, &b).unwrap();
        if let Ok((dims, data)) = idx::read_idx(&p) {
            prop_assert_eq!(dims.iter().product::<usize>(), data.len());
        }
    }

    #[test]
    fn idx_directories_open_or_are_refused(
        images in idx_file(3), labels in idx_file(1), test in proptest::option::of((idx_file(3), idx_file(1))),
        gz in any::<bool>(), fashion in any::<bool>(),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(if fashion { "fashion" } else { "mnist" });
        std::fs::create_dir(&dir).unwrap();
        write_idx(&dir, "train-images-idx3-ubyte", &images, gz);
        write_idx(&dir, "train-labels-idx1-ubyte", &labels, !gz);
        if let Some((ti, tl)) = &test {
            write_idx(&dir, "t10k-images.idx3-ubyte", ti, false);
            write_idx(&dir, "t10k-labels.idx1-ubyte", tl, gz);
        }
        open(&format!("idx:{}", dir.display()), false);
    }

    #[test]
    fn cifar_directories_open_or_are_refused(
        records in 0usize..4, extra in -2i64..3, labels in prop::collection::vec(prop_oneof![4 => 0u8..10, 1 => any::<u8>()], 4),
        test in proptest::option::of(0usize..3), meta in proptest::option::of(prop_oneof![
            Just(b"a\nb\n".to_vec()), Just(Vec::new()), Just(b"\n\n".to_vec()), prop::collection::vec(any::<u8>(), 0..40),
        ]),
        junk in proptest::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let batch = |n: usize, extra: i64| -> Vec<u8> {
            let mut v = Vec::new();
            for i in 0..n {
                v.push(labels[i % labels.len()]);
                v.extend(std::iter::repeat_n(i as u8, 3072));
            }
            let len = (v.len() as i64 + extra).max(0) as usize;
            v.resize(len, 7);
            v
        };
        std::fs::write(dir.path().join("data_batch_1.bin"), batch(records, extra)).unwrap();
        if let Some(j) = &junk {
            std::fs::write(dir.path().join("data_batch_2.bin"), j).unwrap();
        }
        if let Some(t) = test {
            std::fs::write(dir.path().join("test_batch.bin"), batch(t, 0)).unwrap();
        }
        if let Some(m) = &meta {
            std::fs::write(dir.path().join("batches.meta.txt"), m).unwrap();
        }
        open(&format!("cifar10:{}", dir.path().display()), false);
    }

    #[test]
    fn image_folders_open_or_are_refused(
        classes in prop::collection::vec(prop::collection::vec((image_file(), 0usize..4), 0..3), 0..3),
        split in any::<bool>(), skip_bad in any::<bool>(),
    ) {
        let root = tempfile::tempdir().unwrap();
        let base = if split { root.path().join("train") } else { root.path().to_path_buf() };
        for (c, files) in classes.iter().enumerate() {
            let d = base.join(format!("class{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for (i, (f, ext)) in files.iter().enumerate() {
                std::fs::write(d.join(format!("{i}.{}", EXT[*ext])), image_bytes(f)).unwrap();
            }
        }
        if split && classes.len() > 1 {
            // a test split with the first class only
            let d = root.path().join("test/class0");
            std::fs::create_dir_all(&d).unwrap();
            if let Some((f, _)) = classes[0].first() {
                std::fs::write(d.join("t.png"), image_bytes(f)).unwrap();
            }
        }
        open(&format!("folder:{}", root.path().display()), skip_bad);
        open(&format!("images:{}", root.path().display()), skip_bad);
    }

    #[test]
    fn csv_text_parses_or_is_refused(lines in prop::collection::vec(csv_line(), 0..8)) {
        if let Ok(s) = embedded::parse_mnist_csv(&lines.join("\n")) {
            check_opened(&s);
        }
    }

    #[test]
    fn dataset_source_strings_are_opened_or_refused(s in prop_oneof![
        "\\PC{0,20}",
        prop::sample::select(&["embedded:", "embedded:x", "idx:", "idx:/", "cifar10:/dev/null", "folder:/proc/self", "images:", ":", "images:/nonexistent", "folder:/dev"][..]).prop_map(String::from),
    ]) {
        if s.starts_with("embedded") || s.trim().is_empty() || s.contains("/proc") || s.contains("/dev") && s.starts_with("folder") {
            // the embedded set takes ~0.1 s to parse; reading /proc or /dev trees is not a fuzz target
            return Ok(());
        }
        open(&s, false);
    }
}

proptest! {
    // parsing the whole real CSV costs tens of milliseconds: an eighth of the cases
    #![proptest_config(ProptestConfig { cases: ProptestConfig::default().cases / 8, ..ProptestConfig::default() })]

    #[test]
    fn the_real_csv_with_a_line_mutated_parses_or_is_refused(line_idx in any::<usize>(), line in csv_line(), drop_tail in any::<bool>()) {
        let text = mnist_csv();
        let mut lines: Vec<&str> = text.lines().collect();
        let i = line_idx % lines.len();
        lines[i] = &line;
        if drop_tail {
            lines.truncate(i + 1);
        }
        if let Ok(s) = embedded::parse_mnist_csv(&lines.join("\n")) {
            check_opened(&s);
        }
    }
}

#[test]
fn found_by_fuzzing_idx_dimensions_whose_product_overflows_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = vec![0, 0, 8, 3];
    for d in [u32::MAX, u32::MAX, u32::MAX] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    let p = dir.path().join("train-images-idx3-ubyte");
    std::fs::write(&p, &v).unwrap();
    let e = format!("{:#}", idx::read_idx(&p).unwrap_err());
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
}

#[test]
fn an_empty_dataset_is_valid_or_refused_but_never_indexed_out_of_range() {
    let d = Dataset { name: "e".into(), shape: [1, 2, 2], ..Default::default() };
    assert_eq!(d.len(), 0);
    d.validate().unwrap();
}
