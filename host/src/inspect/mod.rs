//! What a researcher looks at, beside the numbers:
//! - [`plots`]: the run's `loss.png` and `eval.png`, redrawn after every evaluation;
//! - [`views`]: `latent views`, the recipe's views as the loader makes them;
//! - [`neighbours`]: `latent neighbours`, test images beside their nearest training images;
//! - [`map`]: `latent map`, t-SNE of the test embeddings, trained beside random init;
//! - [`runs`]: `latent runs`, a table of the runs under a directory;
//! - [`grid`]: the image grid that `views` and `neighbours` draw;
//! - [`plot`]: line charts (plotters), the font and the palette every picture uses.
//!
//! Each picture command writes a `.json` beside its PNG with what it drew.

pub mod grid;
pub mod map;
pub mod neighbours;
pub mod plot;
pub mod plots;
pub mod runs;
pub mod views;

use anyhow::{ensure, Result};
use std::path::{Path, PathBuf};

/// The JSON file written beside a PNG: `X.png` → `X.json`.
pub fn json_path(png: &Path) -> PathBuf {
    png.with_extension("json")
}

/// Checks that `out` names a PNG file.
pub fn check_png_path(out: &Path) -> Result<()> {
    ensure!(
        out.extension().and_then(|e| e.to_str()) == Some("png"),
        "--out {} must be a .png file",
        out.display()
    );
    Ok(())
}

pub use plot::shorten;
