//! Evaluation of frozen features: weighted kNN, a linear probe, and the collapse monitor
//! (the maths), the report with its baselines, and the `latent eval` / `latent embed`
//! commands.
//!
//! ```text
//! kNN (Wu et al. 2018, as solo-learn):  f ← f / ‖f‖;  s_j = ⟨q, f_j⟩ for the k most similar
//!        training features;  score_c = Σ_{j: y_j = c} exp((s_j − max s) / T);  prediction = argmax_c score_c
//! linear probe: multinomial logistic regression on standardised features, full-batch Adam
//! collapse:     std over samples of f/‖f‖, averaged over dimensions, times sqrt(d)
//!               (≈ 1 for well-spread embeddings, 0 when collapsed to a point)
//! effective rank (Roy & Vetterli 2007): exp(H(p)), p_i = σ_i / Σσ, σ the singular values of
//!               the centred embedding matrix
//! ```

pub mod collapse;
pub mod commands;
pub mod knn;
pub mod probe;
pub mod report;

pub use collapse::{collapse_std, effective_rank};
pub use knn::{accuracy, knn_accuracy, knn_predict, normalize_rows};
pub use probe::linear_probe;
