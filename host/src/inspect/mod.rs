//! What a researcher looks at, beside the numbers:
//! - [`plots`]: the run's `loss.png` and `eval.png`, redrawn after every evaluation;
pub mod plots;
pub mod grid;
pub mod views;
pub mod neighbours;
pub mod runs;
