"""Backbones: the paper's Caffe AlexNet, torchvision AlexNet/ResNets and a small net for the embedded world.

Every backbone is one `Backbone` module with the same parts, so pre-training and every transfer task treat
them alike:

    image ─► trunk (convs: conv5 feature map) ─► pool (to a fixed roi_size grid) ─► pool5 (flattened)
          ─► fc6 ─► fc7 ─► classifier (logits)

    from imagenet_transfer.models import build_backbone, rebuild
    net = build_backbone("caffe_alexnet", num_classes=1000)      # 227 px, dropout 0.5
    feats = net.features(images, layers=("pool5", "fc7"))       # {"pool5": (N, 9216), "fc7": (N, 4096)}
    same = rebuild(net.config(), net.state_dict())               # strict load; exact missing keys on mismatch

Architectures (`ARCHITECTURES`; default/minimum resolution in px):
  caffe_alexnet  227 / 100   the paper's network, BVLC's reference CaffeNet (`models/bvlc_reference_caffenet/
                             train_val.prototxt` of the BVLC Caffe repository): conv1/conv2 each followed by ReLU,
                             max-pool, then LRN (size 5, alpha 1e-4, beta 0.75; pooling before normalisation,
                             unlike bvlc_alexnet); grouped conv2/4/5; pools 3/2 with Caffe's ceil rounding;
                             fc6/fc7 4096 with dropout 0.5 after each (fc → ReLU → dropout); Gaussian weights
                             (std 0.01, fc6/fc7 0.005), biases 0 (conv1, conv3, fc8) or 1 (conv2, conv4, conv5,
                             fc6, fc7); biases learn at 2× the rate with no weight decay (`parameter_groups`).
  alexnet        224 / 63    torchvision's AlexNet (dropout before fc6 and fc7, as torchvision has it)
  resnet18       224 / 32    torchvision ResNet-18
  resnet50       224 / 32    torchvision ResNet-50
  small           64 / 32    (up to 128) a fast AlexNet-like net for the low-resolution embedded world: five
                             BN convs in three pooled stages, fc6/fc7 512 wide, dropout 0.3 after each
Weights are always randomly initialised (no downloads).

The parts transfer tasks use:
  trunk      conv layers: image → conv5 feature map (after pool5's max-pool for the AlexNets, layer4 for ResNets)
  pool       AdaptiveAvgPool2d(roi_size): the trunk map on a fixed grid (identity at the default resolution of the
             AlexNets, 6×6); a Fast R-CNN detector replaces it by ROI pooling to `roi_size` on the trunk's map
  fc6, fc7   Sequential(Linear, ReLU[, Dropout]) for the AlexNets and `small`; **None for ResNets**, which have no
             fully-connected hidden layers: their "pool5" is the global average pool of layer4 (the classifier's
             input, the usual frozen feature of a ResNet) and `head()` is parameter-free (avg-pool + flatten)
  head()     the box head for Fast R-CNN: Sequential(Flatten, fc6, fc7), input (R, trunk_channels, roi_size,
             roi_size), output (R, head_dim); it shares its modules (and so its weights) with the backbone.
             ResNets: roi_size 1 (pool5 = global average); their head() averages ROI features of any size
Feature layers (`features`): "conv5" (N, C, H, W) map; "pool5", "fc6", "fc7" flattened (N, D) vectors, computed
after ReLU (Caffe's in-place ReLU blobs); dropout acts only in train mode, so call `.eval()` for features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from imagenet_transfer.errors import UserError

FEATURE_LAYERS = ("conv5", "pool5", "fc6", "fc7")
CONFIG_KEYS = ("arch", "num_classes", "resolution", "dropout")


class Backbone(nn.Module):
    """A classification net split into the parts transfer tasks reuse (see the module docstring)."""

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        resolution: int,
        dropout: float,
        trunk: nn.Module,
        trunk_channels: int,
        roi_size: int,
        fc6: nn.Module | None,
        fc7: nn.Module | None,
        classifier: nn.Linear,
        pre_classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.arch, self.num_classes, self.resolution, self.dropout = arch, num_classes, resolution, dropout
        self.trunk_channels, self.roi_size = trunk_channels, roi_size
        self.trunk = trunk
        self.pool = nn.AdaptiveAvgPool2d(roi_size)
        self.fc6, self.fc7 = fc6, fc7
        self.pre_classifier = pre_classifier or nn.Identity()  # ResNets: optional dropout before the classifier
        self.classifier = classifier
        self.feature_layers: tuple[str, ...] = FEATURE_LAYERS if fc6 is not None else FEATURE_LAYERS[:2]
        self.head_dim = classifier.in_features

    def _pool5(self, conv5: Tensor) -> Tensor:
        return torch.flatten(self.pool(conv5), 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self._pool5(self.trunk(x))
        if self.fc6 is not None:
            h = self.fc7(self.fc6(h))
        return self.classifier(self.pre_classifier(h))

    def features(self, x: Tensor, layers: Iterable[str] = ("pool5", "fc6", "fc7")) -> dict[str, Tensor]:
        """The named activations of `x` (see the module docstring); computes only as deep as needed."""
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        unknown = [name for name in layers if name not in self.feature_layers]
        if unknown:
            raise UserError(
                f"feature layer(s) {', '.join(map(repr, unknown))} do not exist in {self.arch}; "
                f"expected some of {', '.join(self.feature_layers)}"
            )
        out: dict[str, Tensor] = {}
        h = self.trunk(x)
        out["conv5"] = h
        if any(name != "conv5" for name in layers):
            h = out["pool5"] = self._pool5(h)
            if "fc6" in layers or "fc7" in layers:
                h = out["fc6"] = self.fc6(h)
                if "fc7" in layers:
                    out["fc7"] = self.fc7(h)
        return {name: out[name] for name in layers}

    def feature_dims(self) -> dict[str, int]:
        """Width of each vector feature layer, e.g. {"pool5": 9216, "fc6": 4096, "fc7": 4096}."""
        dims = {"pool5": self.trunk_channels * self.roi_size**2}
        if self.fc6 is not None:
            dims["fc6"] = _linear(self.fc6).out_features
            dims["fc7"] = _linear(self.fc7).out_features
        return dims

    def head(self) -> nn.Sequential:
        """Fast R-CNN box head: (R, trunk_channels, roi_size, roi_size) pooled ROI features → (R, head_dim).

        Shares fc6/fc7 with this backbone (copy.deepcopy it for independent weights). For ResNets it has no
        parameters (global average pool + flatten), so the detector adds its own layers.
        """
        if self.fc6 is None:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return nn.Sequential(nn.Flatten(1), self.fc6, self.fc7)

    def config(self) -> dict[str, Any]:
        """Everything `rebuild` needs besides the weights: plain JSON-able values."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def _linear(block: nn.Module) -> nn.Linear:
    return next(m for m in block.modules() if isinstance(m, nn.Linear))


# -- architectures ---------------------------------------------------------------------------------
def _caffe_alexnet(num_classes: int, resolution: int, dropout: float) -> Backbone:
    def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups)

    def lrn() -> nn.LocalResponseNorm:
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    trunk = nn.Sequential(
        conv(3, 96, 11, stride=4),
        relu(),
        pool(),
        lrn(),  # conv1 / pool1 / norm1
        conv(96, 256, 5, pad=2, groups=2),
        relu(),
        pool(),
        lrn(),  # conv2 / pool2 / norm2
        conv(256, 384, 3, pad=1),
        relu(),  # conv3
        conv(384, 384, 3, pad=1, groups=2),
        relu(),  # conv4
        conv(384, 256, 3, pad=1, groups=2),
        relu(),
        pool(),  # conv5 / pool5
    )
    fc6 = nn.Sequential(nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout))
    fc7 = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout))
    net = Backbone(
        arch="caffe_alexnet",
        num_classes=num_classes,
        resolution=resolution,
        dropout=dropout,
        trunk=trunk,
        trunk_channels=256,
        roi_size=6,
        fc6=fc6,
        fc7=fc7,
        classifier=nn.Linear(4096, num_classes),
    )
    # CaffeNet's fillers: Gaussian weights, bias 1 where the prototxt has it (conv2, conv4, conv5, fc6, fc7)
    convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
    for i, layer in enumerate([*convs, _linear(fc6), _linear(fc7), net.classifier]):
        nn.init.normal_(layer.weight, 0.0, 0.005 if i in (5, 6) else 0.01)
        nn.init.constant_(layer.bias, 1.0 if i in (1, 3, 4, 5, 6) else 0.0)
    return net


def _torchvision_alexnet(num_classes: int, resolution: int, dropout: float) -> Backbone:
    tv = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    drop1, lin6, relu6, drop2, lin7, relu7, lin8 = tv.classifier
    return Backbone(
        arch="alexnet",
        num_classes=num_classes,
        resolution=resolution,
        dropout=dropout,
        trunk=tv.features,
        trunk_channels=256,
        roi_size=6,
        fc6=nn.Sequential(drop1, lin6, relu6),
        fc7=nn.Sequential(drop2, lin7, relu7),
        classifier=lin8,
    )


def _resnet(name: str) -> Callable[[int, int, float], Backbone]:
    def build(num_classes: int, resolution: int, dropout: float) -> Backbone:
        tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        trunk = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool, tv.layer1, tv.layer2, tv.layer3, tv.layer4)
        return Backbone(
            arch=name,
            num_classes=num_classes,
            resolution=resolution,
            dropout=dropout,
            trunk=trunk,
            trunk_channels=tv.fc.in_features,
            roi_size=1,
            fc6=None,
            fc7=None,
            classifier=tv.fc,
            pre_classifier=nn.Dropout(dropout) if dropout > 0 else None,
        )

    return build


def _small(num_classes: int, resolution: int, dropout: float) -> Backbone:
    def conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(3, 2, padding=1)

    trunk = nn.Sequential(
        *conv(3, 48, 5, stride=2),
        pool(),  # conv1: 64 px → 32 → 16
        *conv(48, 128, 3),
        pool(),  # conv2: 16 → 8
        *conv(128, 192, 3),  # conv3
        *conv(192, 192, 3),  # conv4
        *conv(192, 128, 3),
        pool(),  # conv5 / pool5: 8 → 4
    )
    width = 512
    fc6 = nn.Sequential(nn.Linear(128 * 16, width), nn.ReLU(inplace=True), nn.Dropout(dropout))
    fc7 = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(dropout))
    return Backbone(
        arch="small",
        num_classes=num_classes,
        resolution=resolution,
        dropout=dropout,
        trunk=trunk,
        trunk_channels=128,
        roi_size=4,
        fc6=fc6,
        fc7=fc7,
        classifier=nn.Linear(width, num_classes),
    )


@dataclass(frozen=True)
class Architecture:
    build: Callable[[int, int, float], Backbone]  # (num_classes, resolution, dropout) → Backbone
    default_resolution: int
    min_resolution: int
    max_resolution: int | None
    default_dropout: float
    description: str
    bias_lr_mult: float = 1.0  # Caffe's `lr_mult` of the second blob (biases) of every layer
    bias_decay_mult: float = 1.0  # and its `decay_mult`


ARCHITECTURES: dict[str, Architecture] = {
    "caffe_alexnet": Architecture(
        _caffe_alexnet, 227, 100, None, 0.5, "the paper's network, BVLC's reference CaffeNet", 2.0, 0.0
    ),
    "alexnet": Architecture(_torchvision_alexnet, 224, 63, None, 0.5, "torchvision AlexNet"),
    "resnet18": Architecture(_resnet("resnet18"), 224, 32, None, 0.0, "torchvision ResNet-18"),
    "resnet50": Architecture(_resnet("resnet50"), 224, 32, None, 0.0, "torchvision ResNet-50"),
    "small": Architecture(_small, 64, 32, 128, 0.3, "small AlexNet-like net for the embedded world"),
}


def architecture(arch: str) -> Architecture:
    """The table entry of `arch`; UserError listing the valid names otherwise."""
    try:
        return ARCHITECTURES[arch]
    except (KeyError, TypeError):
        raise UserError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}") from None


def parameter_groups(net: nn.Module, arch: str, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """SGD parameter groups of `net` with the architecture's per-parameter multipliers.

    caffe_alexnet follows the prototxt: weights at `lr` with `weight_decay`, biases at 2 × `lr` with no decay.
    Other architectures get one group (every parameter at `lr` with `weight_decay`). The weights' group comes
    first, so `param_groups[0]["lr"]` is the base rate."""
    spec = architecture(arch)
    if spec.bias_lr_mult == 1.0 and spec.bias_decay_mult == 1.0:
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    return [
        {"params": [p for name, p in named if not name.endswith("bias")], "lr": lr, "weight_decay": weight_decay},
        {
            "params": [p for name, p in named if name.endswith("bias")],
            "lr": lr * spec.bias_lr_mult,
            "weight_decay": weight_decay * spec.bias_decay_mult,
        },
    ]


def default_resolution(arch: str) -> int:
    return architecture(arch).default_resolution


def check_resolution(arch: str, resolution: int) -> int:
    """`resolution` if `arch` can take square inputs of that many pixels, else UserError."""
    spec = architecture(arch)
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise UserError(f"resolution {resolution!r} for {arch} is not an integer number of pixels")
    top = f" and at most {spec.max_resolution}" if spec.max_resolution else ""
    if resolution < spec.min_resolution or (spec.max_resolution and resolution > spec.max_resolution):
        raise UserError(
            f"resolution {resolution} px is out of range for {arch}: expected at least "
            f"{spec.min_resolution}{top} (default {spec.default_resolution})"
        )
    return resolution


def build_backbone(
    arch: str, num_classes: int, *, resolution: int | None = None, dropout: float | None = None
) -> Backbone:
    """A randomly initialised backbone; resolution and dropout default to the architecture's own."""
    spec = architecture(arch)
    resolution = check_resolution(arch, spec.default_resolution if resolution is None else resolution)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes {num_classes!r} for {arch} is not a positive integer")
    dropout = spec.default_dropout if dropout is None else dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout {dropout!r} for {arch} is not a probability in [0, 1)")
    return spec.build(num_classes, resolution, float(dropout))


def rebuild(config: dict[str, Any], state_dict: dict[str, Tensor]) -> Backbone:
    """The backbone `config` describes (as `Backbone.config()` returns it) with `state_dict` loaded strictly."""
    if not isinstance(config, dict):
        raise UserError(f"backbone config {config!r} is not a mapping; expected keys {', '.join(CONFIG_KEYS)}")
    missing_cfg = [k for k in CONFIG_KEYS if k not in config]
    unknown_cfg = [k for k in config if k not in CONFIG_KEYS]
    if missing_cfg or unknown_cfg:
        raise UserError(
            f"backbone config has missing key(s) [{', '.join(missing_cfg)}] and unknown key(s) "
            f"[{', '.join(map(str, unknown_cfg))}]; expected exactly {', '.join(CONFIG_KEYS)}"
        )
    net = build_backbone(
        config["arch"], config["num_classes"], resolution=config["resolution"], dropout=config["dropout"]
    )
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong_shape]
        raise UserError(
            f"weights do not match a {config['arch']} backbone ({config['num_classes']} classes): "
            f"missing keys {missing}; unexpected keys {unexpected}; wrong shapes {shapes}"
        )
    net.load_state_dict(state_dict, strict=True)
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "ARCHITECTURES",
    "FEATURE_LAYERS",
    "Architecture",
    "Backbone",
    "architecture",
    "build_backbone",
    "check_resolution",
    "count_parameters",
    "default_resolution",
    "rebuild",
]
