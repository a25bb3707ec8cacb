"""train: GPU training of CIFAR ResNet-18 / DenseNet-40-12 on ppdata shards."""
