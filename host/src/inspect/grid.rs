//! A PNG grid of images with captions, for `latent views` and `latent neighbours`: pixels are
//! copied (nearest-neighbour, enlarged `scale` times), text and frames are drawn with plotters
//! on the same buffer, and the image crate writes the PNG.

use anyhow::{anyhow, ensure, Context as _, Result};
use plotters::prelude::*;
use std::path::Path;

/// One image of the grid: `[C, H, W]` values (C = 1 or 3).
#[derive(Clone, Debug)]
pub struct Tile {
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// `C·H·W` values; shown as they are when all lie in [0, 1], else stretched min to max
    /// (a normalized view).
    pub pixels: Vec<f32>,
    /// Text under the image.
    pub caption: String,
    /// A coloured frame around it (`None`: no frame).
    pub frame: Option<RGBColor>,
}

/// One row: a label on its left and its tiles.
#[derive(Clone, Debug)]
pub struct Row {
    /// Text left of the row.
    pub label: String,
    /// Images, left to right.
    pub tiles: Vec<Tile>,
}

/// Where each tile's image was drawn: `(x, y)` of its top-left pixel, per row and column.
pub type Layout = Vec<Vec<(u32, u32)>>;

/// Frame colour of a right neighbour.
pub const RIGHT: RGBColor = RGBColor(30, 150, 60);
/// Frame colour of a wrong one.
pub const WRONG: RGBColor = RGBColor(220, 30, 30);

const TITLE_H: u32 = 40;
const CAPTION_H: u32 = 18;
const GAP: u32 = 8;
const FRAME: u32 = 3;

/// The PNG's size for `rows` at `scale`, with a header of column titles when `columns` is not
/// empty: `(width, height, label width, cell width, cell height)`.
fn geometry(
    title: &str,
    rows: &[Row],
    columns: &[String],
    scale: u32,
) -> (u32, u32, u32, u32, u32) {
    let (mut th, mut tw, mut ncol) = (1u32, 1u32, 1u32);
    for r in rows {
        ncol = ncol.max(r.tiles.len() as u32);
        for t in &r.tiles {
            th = th.max(t.shape[1] as u32 * scale);
            tw = tw.max(t.shape[2] as u32 * scale);
        }
    }
    let label_w =
        8 + 8 * rows.iter().map(|r| r.label.chars().count() as u32).max().unwrap_or(0).min(24);
    let caption_w = 7 * rows
        .iter()
        .flat_map(|r| r.tiles.iter())
        .map(|t| t.caption.chars().count() as u32)
        .max()
        .unwrap_or(0);
    let cell_w = (tw + 2 * FRAME).max(caption_w) + GAP;
    let cell_h = th + 2 * FRAME + CAPTION_H + GAP;
    let head = TITLE_H + if columns.is_empty() { 0 } else { CAPTION_H + 4 };
    // the title (20 px font, about 9 px a character) fits
    let w = (label_w + ncol * cell_w + GAP).max(2 * GAP + 9 * title.chars().count() as u32);
    (w, head + rows.len() as u32 * cell_h + GAP, label_w, cell_w, cell_h)
}

/// Draws `rows` under `title` (and column titles `columns`) into the PNG `path`; returns the
/// PNG's size and where each image went.
pub fn draw(
    path: &Path,
    title: &str,
    columns: &[String],
    rows: &[Row],
    scale: u32,
) -> Result<((u32, u32), Layout)> {
    ensure!(scale >= 1, "scale must be at least 1");
    crate::inspect::plot::register_font();
    let (w, h, label_w, cell_w, cell_h) = geometry(title, rows, columns, scale);
    ensure!(
        (w as u64) * (h as u64) <= 100_000_000,
        "the grid would be {w} × {h} pixels; ask for fewer images"
    );
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let head = TITLE_H + if columns.is_empty() { 0 } else { CAPTION_H + 4 };
    let mut layout = Vec::with_capacity(rows.len());
    for (ri, row) in rows.iter().enumerate() {
        let mut at = Vec::with_capacity(row.tiles.len());
        for (ci, t) in row.tiles.iter().enumerate() {
            let x = label_w + ci as u32 * cell_w + FRAME;
            let y = head + ri as u32 * cell_h + FRAME;
            blit(&mut buf, w, t, x, y, scale)?;
            at.push((x, y));
        }
        layout.push(at);
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
        let font = |px: u32| ("sans-serif", px).into_font().color(&BLACK);
        root.draw(&Text::new(title.to_string(), (GAP as i32, 10), font(20)))
            .map_err(|e| err(&e))?;
        for (ci, c) in columns.iter().enumerate() {
            let x = (label_w + ci as u32 * cell_w) as i32;
            root.draw(&Text::new(c.clone(), (x, TITLE_H as i32), font(14))).map_err(|e| err(&e))?;
        }
        for (ri, row) in rows.iter().enumerate() {
            let y0 = (head + ri as u32 * cell_h) as i32;
            root.draw(&Text::new(
                row.label.clone(),
                (6, y0 + (cell_h as i32 - CAPTION_H as i32) / 2 - 6),
                font(14),
            ))
            .map_err(|e| err(&e))?;
            for (ci, t) in row.tiles.iter().enumerate() {
                let (x, y) = layout[ri][ci];
                let (tw, th) =
                    ((t.shape[2] as u32 * scale) as i32, (t.shape[1] as u32 * scale) as i32);
                if let Some(c) = t.frame {
                    for k in 1..=FRAME as i32 {
                        let r = Rectangle::new(
                            [
                                (x as i32 - k, y as i32 - k),
                                (x as i32 + tw + k - 1, y as i32 + th + k - 1),
                            ],
                            c.stroke_width(1),
                        );
                        root.draw(&r).map_err(|e| err(&e))?;
                    }
                }
                root.draw(&Text::new(
                    t.caption.clone(),
                    (x as i32 - FRAME as i32, y as i32 + th + FRAME as i32 + 2),
                    font(12),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    image::save_buffer(path, &buf, w, h, image::ExtendedColorType::Rgb8)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(((w, h), layout))
}

/// The 8-bit value a tile's pixel is drawn with (channel `c`, row `y`, column `x`).
pub fn shade(t: &Tile, c: usize, y: usize, x: usize) -> u8 {
    let (lo, hi) = range(&t.pixels);
    let [_, h, w] = t.shape;
    let v = t.pixels[(c * h + y) * w + x];
    (((v - lo) / (hi - lo).max(1e-12)).clamp(0.0, 1.0) * 255.0).round() as u8
}

fn range(p: &[f32]) -> (f32, f32) {
    let (lo, hi) = p.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if lo >= 0.0 && hi <= 1.0 {
        (0.0, 1.0)
    } else {
        (lo, hi)
    }
}

fn blit(buf: &mut [u8], w: u32, t: &Tile, x0: u32, y0: u32, scale: u32) -> Result<()> {
    let [c, h, wd] = t.shape;
    ensure!(c == 1 || c == 3, "a tile has 1 or 3 channels, got {c}");
    ensure!(
        t.pixels.len() == c * h * wd,
        "a tile of shape {:?} needs {} values, got {}",
        t.shape,
        c * h * wd,
        t.pixels.len()
    );
    for y in 0..h {
        for x in 0..wd {
            let rgb = if c == 1 {
                [shade(t, 0, y, x); 3]
            } else {
                [shade(t, 0, y, x), shade(t, 1, y, x), shade(t, 2, y, x)]
            };
            for dy in 0..scale {
                for dx in 0..scale {
                    let (px, py) = (x0 + x as u32 * scale + dx, y0 + y as u32 * scale + dy);
                    let i = ((py * w + px) * 3) as usize;
                    buf[i..i + 3].copy_from_slice(&rgb);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_drawn_where_the_layout_says_with_their_own_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        let grey = Tile {
            shape: [1, 2, 3],
            pixels: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            caption: "a".into(),
            frame: Some(WRONG),
        };
        let normed = Tile {
            shape: [3, 2, 2],
            pixels: (0..12).map(|i| i as f32 - 4.0).collect(),
            caption: "b".into(),
            frame: None,
        };
        let rows = vec![
            Row { label: "first".into(), tiles: vec![grey.clone(), normed.clone()] },
            Row { label: "second".into(), tiles: vec![grey.clone()] },
        ];
        let ((w, h), layout) = draw(&p, "title", &["x".into(), "y".into()], &rows, 4).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (w, h));
        for (ri, row) in rows.iter().enumerate() {
            for (ci, t) in row.tiles.iter().enumerate() {
                let (x, y) = layout[ri][ci];
                for (py, px) in [(0, 0), (1, 1), (1, t.shape[2] - 1)] {
                    let got = img.get_pixel(x + px as u32 * 4 + 2, y + py as u32 * 4 + 2).0;
                    let want: Vec<u8> = (0..3)
                        .map(|c| shade(t, if t.shape[0] == 1 { 0 } else { c }, py, px))
                        .collect();
                    assert_eq!(got.to_vec(), want, "row {ri} tile {ci} pixel ({py}, {px})");
                }
            }
        }
        assert_eq!(shade(&grey, 0, 1, 2), 255);
        assert_eq!(shade(&normed, 0, 0, 0), 0, "a normalized tile is stretched min to max");
        assert_eq!(shade(&normed, 2, 1, 1), 255);
        // the frame of a wrong neighbour is red, just outside the image
        let (x, y) = layout[0][0];
        assert_eq!(img.get_pixel(x - 1, y + 3).0, [WRONG.0, WRONG.1, WRONG.2]);
    }
}
