//! [`Planes`]: one image as `C` row-major f32 planes (`[C, H, W]`), the working format of every
//! transform, and [`resize_box`], the antialiased bilinear resampler shared by the crop and the
//! pipeline's plain resize.
//!
//! # Resampling (PIL's `Image.resize(.., BILINEAR, box)`)
//! ```text
//! scale   = in_len / out_len                       per axis, for a box of in_len input pixels
//! support = max(scale, 1)                          triangle radius, in input pixels
//! centre  = (o + 0.5) * scale                      of output pixel o, in box coordinates
//! w_k     = max(0, 1 - |k + 0.5 - centre| / support)   for input pixels k of the box
//! out[o]  = Σ_k w_k in[k] / Σ_k w_k
//! ```
//! Upscaling (`scale ≤ 1`) is plain bilinear interpolation with half-pixel centres; downscaling
//! widens the triangle to `scale` pixels, which averages every input pixel instead of aliasing.
//! Weights are computed once per axis and call, then applied separably (rows, then columns).
//! Outputs are convex combinations of inputs, so values stay in [0, 1].

/// An image as `c` planes of `h × w` values, row-major: index `(ch * h + y) * w + x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    /// Channels (1 or 3).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `c * h * w` values.
    pub data: Vec<f32>,
}

impl Planes {
    /// Wraps `data` of shape `[c, h, w]`; panics if the length disagrees.
    pub fn new(c: usize, h: usize, w: usize, data: Vec<f32>) -> Planes {
        assert_eq!(
            data.len(),
            c * h * w,
            "image of shape [{c}, {h}, {w}] needs {} values",
            c * h * w
        );
        Planes { c, h, w, data }
    }

    /// The values of channel `ch`.
    pub fn plane(&self, ch: usize) -> &[f32] {
        let n = self.h * self.w;
        &self.data[ch * n..(ch + 1) * n]
    }

    /// The values of channel `ch`, mutably.
    pub fn plane_mut(&mut self, ch: usize) -> &mut [f32] {
        let n = self.h * self.w;
        &mut self.data[ch * n..(ch + 1) * n]
    }
}

/// Filter taps of one axis: for output `o`, weights `weights[o * stride..][..len[o]]` apply to
/// input pixels `start[o]..start[o] + len[o]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<f32>,
}

fn taps(offset: usize, in_len: usize, out_len: usize) -> Taps {
    let scale = in_len as f32 / out_len as f32;
    let support = scale.max(1.0);
    let stride = 2 * support.ceil() as usize + 2;
    let mut t = Taps {
        start: Vec::with_capacity(out_len),
        len: Vec::with_capacity(out_len),
        stride,
        weights: vec![0.0; out_len * stride],
    };
    for o in 0..out_len {
        let centre = (o as f32 + 0.5) * scale;
        let lo = ((centre - support + 0.5).floor().max(0.0) as usize).min(in_len - 1);
        let hi = ((centre + support + 0.5).floor() as usize).clamp(lo + 1, in_len).min(lo + stride);
        let w = &mut t.weights[o * stride..o * stride + (hi - lo)];
        let mut sum = 0.0;
        for (i, wk) in w.iter_mut().enumerate() {
            let d = ((lo + i) as f32 + 0.5 - centre).abs() / support;
            *wk = (1.0 - d).max(0.0);
            sum += *wk;
        }
        if sum > 0.0 {
            w.iter_mut().for_each(|wk| *wk /= sum);
        } else {
            w[0] = 1.0;
        }
        t.start.push(offset + lo);
        t.len.push(hi - lo);
    }
    t
}

/// Resamples the box of `bh × bw` pixels at (`top`, `left`) of `src` to `oh × ow`.
pub fn resize_box(
    src: &Planes,
    top: usize,
    left: usize,
    bh: usize,
    bw: usize,
    oh: usize,
    ow: usize,
) -> Planes {
    assert!(top + bh <= src.h && left + bw <= src.w && bh > 0 && bw > 0 && oh > 0 && ow > 0);
    let c = src.c;
    let mut out = vec![0.0f32; c * oh * ow];
    if bh == oh && bw == ow {
        for ch in 0..c {
            for y in 0..oh {
                let s = &src.plane(ch)[(top + y) * src.w + left..][..ow];
                out[(ch * oh + y) * ow..][..ow].copy_from_slice(s);
            }
        }
        return Planes::new(c, oh, ow, out);
    }
    let tx = taps(left, bw, ow);
    let ty = taps(top, bh, oh);
    // Horizontal pass over the box's rows: tmp is [c, bh, ow].
    let mut tmp = vec![0.0f32; c * bh * ow];
    // Upscaling has at most 4 taps: a fixed-width path over a zero-padded copy of the row
    // (unused weights are 0), which the compiler unrolls.
    let mut padded = vec![0.0f32; bw + 4];
    for ch in 0..c {
        let plane = src.plane(ch);
        for y in 0..bh {
            let row = &plane[(top + y) * src.w..][..src.w];
            let dst = &mut tmp[(ch * bh + y) * ow..][..ow];
            if tx.stride == 4 {
                padded[..bw].copy_from_slice(&row[left..left + bw]);
                for (o, d) in dst.iter_mut().enumerate() {
                    let s = tx.start[o] - left;
                    let w: &[f32; 4] = tx.weights[o * 4..o * 4 + 4].try_into().unwrap();
                    let x: &[f32; 4] = padded[s..s + 4].try_into().unwrap();
                    *d = w[0] * x[0] + w[1] * x[1] + w[2] * x[2] + w[3] * x[3];
                }
            } else {
                for (o, d) in dst.iter_mut().enumerate() {
                    let (s, n) = (tx.start[o], tx.len[o]);
                    let w = &tx.weights[o * tx.stride..][..n];
                    *d = row[s..s + n].iter().zip(w).map(|(a, b)| a * b).sum();
                }
            }
        }
    }
    // Vertical pass: out row = Σ_k w_k tmp row (vectorises over x).
    for ch in 0..c {
        for o in 0..oh {
            let (s, n) = (ty.start[o] - top, ty.len[o]);
            let dst = &mut out[(ch * oh + o) * ow..][..ow];
            for k in 0..n {
                let wk = ty.weights[o * ty.stride + k];
                let srow = &tmp[(ch * bh + s + k) * ow..][..ow];
                dst.iter_mut().zip(srow).for_each(|(d, v)| *d += wk * v);
            }
        }
    }
    Planes::new(c, oh, ow, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constants_and_averages_when_halving() {
        let img = Planes::new(1, 4, 4, vec![0.25; 16]);
        let r = resize_box(&img, 0, 0, 4, 4, 7, 3);
        assert!(r.data.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // 2x downscale of a 2-pixel checker row pattern averages each pair (antialiasing).
        let img = Planes::new(1, 1, 4, vec![0.0, 1.0, 0.0, 1.0]);
        let r = resize_box(&img, 0, 0, 1, 4, 1, 2);
        assert!(r.data.iter().all(|v| (v - 0.5).abs() < 0.2), "{:?}", r.data);
    }

    #[test]
    fn identity_box_copies() {
        let img = Planes::new(2, 3, 3, (0..18).map(|v| v as f32 / 18.0).collect());
        let r = resize_box(&img, 1, 1, 2, 2, 2, 2);
        assert_eq!(
            r.data,
            vec![
                4.0 / 18.0,
                5.0 / 18.0,
                7.0 / 18.0,
                8.0 / 18.0,
                13.0 / 18.0,
                14.0 / 18.0,
                16.0 / 18.0,
                17.0 / 18.0
            ]
        );
    }

    /// Reference values from PIL (mode "F", so no u8 rounding):
    /// ```text
    /// a = (np.arange(24, dtype=np.float32).reshape(4, 6) * 7 % 23) / 23; im = Image.fromarray(a, mode="F")
    /// im.resize((3, 2), Image.BILINEAR); im.resize((7, 5), Image.BILINEAR)
    /// im.resize((4, 3), Image.BILINEAR, box=(1, 1, 5, 4))
    /// ```
    #[test]
    fn resize_matches_pil_bilinear() {
        let img = Planes::new(1, 4, 6, (0..24).map(|i| ((i * 7) % 23) as f32 / 23.0).collect());
        let down = [0.39929, 0.54736, 0.384206, 0.615794, 0.45264, 0.417036];
        let up = [
            0.0, 0.23913, 0.5, 0.76087, 0.664596, 0.282609, 0.521739, 0.578261, 0.267391, 0.378261,
            0.63913, 0.542857, 0.16087, 0.4, 0.73913, 0.585404, 0.417702, 0.5, 0.582298, 0.414596,
            0.26087, 0.6, 0.83913, 0.457143, 0.36087, 0.621739, 0.668323, 0.121739, 0.478261,
            0.717391, 0.335404, 0.23913, 0.5, 0.546584, 0.0,
        ];
        let boxed = [
            0.130435, 0.434783, 0.73913, 0.043478, 0.956522, 0.26087, 0.565217, 0.869565, 0.782609,
            0.086957, 0.391304, 0.695652,
        ];
        for (got, want) in [
            (resize_box(&img, 0, 0, 4, 6, 2, 3), &down[..]),
            (resize_box(&img, 0, 0, 4, 6, 5, 7), &up[..]),
            (resize_box(&img, 1, 1, 3, 4, 3, 4), &boxed[..]),
        ] {
            for (a, b) in got.data.iter().zip(want) {
                assert!((a - b).abs() < 1e-5, "{:?} vs {want:?}", got.data);
            }
        }
    }
}
