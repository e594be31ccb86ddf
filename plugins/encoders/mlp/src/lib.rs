//! MLP encoder plugin (being written)
