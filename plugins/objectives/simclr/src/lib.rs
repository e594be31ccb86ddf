//! SimCLR objective plugin: projection head + NT-Xent (being written)
