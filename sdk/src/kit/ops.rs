//! Dense kernels shared by the layers: matrix multiply on the `gemm` crate (all cores via rayon).

/// A row-major matrix view: `rows x cols`, possibly transposed.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Rows of the stored matrix.
    pub rows: usize,
    /// Columns of the stored matrix.
    pub cols: usize,
    /// Use the transpose.
    pub t: bool,
}

impl<'a> Mat<'a> {
    /// A stored `rows x cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix {rows}x{cols}");
        Mat { data, rows, cols, t: false }
    }
    /// Its transpose (no copy).
    pub fn t(self) -> Self {
        Mat { t: !self.t, ..self }
    }
    /// (rows, columns) of the logical matrix.
    pub(crate) fn shape(&self) -> (usize, usize) {
        if self.t {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) of the logical matrix.
    pub(crate) fn strides(&self) -> (isize, isize) {
        if self.t {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// Parallelism for a product of this many multiply-adds: single-threaded below ~1M.
fn parallelism(flops: usize) -> gemm::Parallelism {
    if flops < (1 << 20) {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// `c = a · b` (or `c += a · b` with `accumulate`), `c` row-major `m x n`.
pub fn matmul(a: Mat, b: Mat, c: &mut [f32], accumulate: bool) {
    if let Some((m, n, k)) = product_dims(&a, &b, c, accumulate, "matmul") {
        gemm_f32(a, b, c, accumulate, (m, n, k), parallelism(m * n * k));
    }
}

/// Checks the shapes of `c = a · b` (`what` names the product in the panic) and does the
/// empty cases: `Some((m, n, k))` when there is a product left to compute.
pub(crate) fn product_dims(
    a: &Mat,
    b: &Mat,
    c: &mut [f32],
    accumulate: bool,
    what: &str,
) -> Option<(usize, usize, usize)> {
    let ((m, k), (k2, n)) = (a.shape(), b.shape());
    assert_eq!(k, k2, "{what} inner dimensions {m}x{k} · {k2}x{n}");
    assert_eq!(c.len(), m * n, "{what} output {m}x{n}");
    if m == 0 || n == 0 {
        return None;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return None;
    }
    Some((m, n, k))
}

/// The `gemm` crate's `c = a · b` (or `+=`) at parallelism `par`, for dimensions checked by
/// [`product_dims`].
#[rustfmt::skip] // the arguments in gemm's groups: dims, c, accumulate, a, b, alpha/beta, conj, par
pub(crate) fn gemm_f32(
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    par: gemm::Parallelism,
) {
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    // SAFETY: product_dims bounds every index gemm touches by the slices' lengths.
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, n as isize,
            accumulate,
            a.data.as_ptr(), a_cs, a_rs,
            b.data.as_ptr(), b_cs, b_rs,
            1.0, 1.0,
            false, false, false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = a[i * c + j];
            }
        }
        t
    }

    #[test]
    fn matmul_matches_naive_with_transposes() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        matmul(Mat::new(&a, m, k), Mat::new(&b, k, n), &mut c, false);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        matmul(Mat::new(&at, k, m).t(), Mat::new(&bt, n, k).t(), &mut c, false);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        matmul(Mat::new(&a, m, k), Mat::new(&b, k, n), &mut c, true);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 2.0 * y).abs() < 1e-5);
        }
    }
}
