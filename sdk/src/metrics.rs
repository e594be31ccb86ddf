//! Metrics that objectives report beside their loss.

use crate::kit::Tensor;

/// Collapse indicator: the standard deviation over the batch (population, 1/B) of the
/// L2-normalised rows of `z`, averaged over the D dimensions, times √D. About 1 for well-spread
/// embeddings (uniform on the sphere: each coordinate has std ≈ 1/√D), 0 when collapsed to a point.
pub fn collapse(z: &Tensor) -> anyhow::Result<f64> {
    let (b, d) = z.dims2("embeddings")?;
    let mut u: Vec<f64> = z.data.iter().map(|&v| v as f64).collect();
    for row in u.chunks_mut(d) {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= n);
    }
    let mut total = 0.0;
    for j in 0..d {
        let mean = (0..b).map(|i| u[i * d + j]).sum::<f64>() / b as f64;
        let var = (0..b).map(|i| (u[i * d + j] - mean).powi(2)).sum::<f64>() / b as f64;
        total += var.sqrt();
    }
    Ok(total / d as f64 * (d as f64).sqrt())
}
