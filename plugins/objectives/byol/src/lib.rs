//! BYOL objective plugin: projector, predictor, EMA target projector (being written)
