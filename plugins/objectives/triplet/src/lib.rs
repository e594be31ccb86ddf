//! FaceNet triplet objective plugin with all / batch-hard / semi-hard mining (being written)
