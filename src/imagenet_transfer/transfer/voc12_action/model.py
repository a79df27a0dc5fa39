"""PASCAL-ACT-CLS's network: the backbone's trunk + fc6/fc7 shared by the views, a new linear head; its loss and
scores (see the package docstring, "Loss").

    model = ActionNet(backbone, views=1, outputs=len(VOC_ACTIONS) + 1)     # + 1: softmax's "none of them"
    loss = action_loss(model(views), labels, "softmax")
    scores = action_scores(model(views), "softmax")                        # (N, 10)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imagenet_transfer.datasets.voc import VOC_ACTIONS


class ActionNet(nn.Module):
    """Backbone trunk + fc6/fc7 (pool5 for ResNets), shared by the views, + a new linear head on their concatenation."""

    def __init__(self, backbone: nn.Module, *, views: int, outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = "fc7" if "fc7" in backbone.feature_layers else "pool5"
        self.feature_dim = backbone.feature_dims()[self.layer]
        self.head = nn.Linear(self.feature_dim * views, outputs)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def finetuned_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters the forward pass uses (its old classifier is left out)."""
        skip = {id(p) for m in (self.backbone.classifier, self.backbone.pre_classifier) for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in skip]

    def forward(self, views: Tensor) -> Tensor:  # (N, S, 3, R, R) normalised → (N, outputs)
        n, s = views.shape[:2]
        feats = self.backbone.features(views.flatten(0, 1), (self.layer,))[self.layer]
        return self.head(feats.reshape(n, s * feats.shape[1]))


def action_scores(logits: Tensor, loss: str) -> Tensor:
    """(N, 10) action scores: sigmoids ("bce") or the 10 action probabilities of the 11-way softmax."""
    return torch.sigmoid(logits) if loss == "bce" else torch.softmax(logits, dim=1)[:, : len(VOC_ACTIONS)]


def action_loss(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    """The training loss of (N, 10) {0, 1} `labels` (see the package docstring, "Loss")."""
    if loss == "bce":
        # summed over the actions, averaged over persons: the mean over all N×10 entries would divide the
        # gradient by 10 compared with softmax CE (and trained far worse)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / len(labels)
    none = (labels.sum(1, keepdim=True) == 0).float()  # the 11th class: no listed action (VOC's "other")
    target = torch.cat([labels, none], 1)
    return nn.functional.cross_entropy(logits, target / target.sum(1, keepdim=True))
