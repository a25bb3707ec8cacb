"""train: GPU training of CIFAR ResNet-18 / DenseNet-40-12 on ppdata shards (``ppdata[train]``)."""
from ppdata.extras import require

require("train", "the train package", ("torch", "torchvision"))
