//! Standard augmentation plugins: crop, flip, jitter, grayscale, blur, solarize, normalize; simclr and byol presets (being written)
