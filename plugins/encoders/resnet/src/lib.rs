//! ResNet encoder plugin (runtime-shaped; presets resnet-mini, resnet18-cifar) (being written)
