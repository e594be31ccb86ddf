//! Datasets and the data loader (being written).
