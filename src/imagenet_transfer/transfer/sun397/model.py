"""SUN-CLS's models: which backbone layers the linear protocol reads (its classifier is `transfer.linear`), and the
fine-tuning network, the backbone with a new num-scenes head.

    feature_layers(backbone, ())            # ("pool5", "fc6", "fc7"), or ("pool5",) for a ResNet
    net = with_new_head(backbone, 397)      # a copy; classifier N(0, 0.01), bias 0
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import vector_layers


def feature_layers(backbone, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The layers to evaluate: `requested` (each must exist) or every one of pool5/fc6/fc7 the backbone has."""
    have = vector_layers(backbone)
    if not requested:
        return tuple(have)
    absent = [layer for layer in requested if layer not in have]
    if absent:
        raise UserError(
            f"layer(s) {', '.join(absent)} do not exist in a {backbone.arch} backbone; "
            f"it has {', '.join(have)} (leave `layers` empty to use all of them)"
        )
    return tuple(requested)


def with_new_head(backbone, num_classes: int, *, seed: int = 0):
    """A copy of `backbone` whose classifier is a fresh num_classes-way layer (weights N(0, 0.01), bias 0)."""
    net = copy.deepcopy(backbone).cpu()
    head = nn.Linear(net.classifier.in_features, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    net.classifier, net.num_classes = head, num_classes
    return net
