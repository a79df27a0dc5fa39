"""Backbones: shapes of every architecture, feature layers, config → rebuild round trip, bad input."""

import json

import pytest
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.models import (
    ARCHITECTURES,
    build_backbone,
    check_resolution,
    default_resolution,
    parameter_groups,
    rebuild,
)

NUM_CLASSES = 7
VECTOR_DIMS = {  # arch → widths of pool5, fc6, fc7 at the default resolution
    "caffe_alexnet": (9216, 4096, 4096),
    "alexnet": (9216, 4096, 4096),
    "resnet18": (512, None, None),
    "resnet50": (2048, None, None),
    "small": (2048, 512, 512),
}


@pytest.fixture(scope="module")
def nets():
    """One backbone per architecture at its default resolution, built once (AlexNets take ~0.5 s each)."""
    torch.manual_seed(0)
    return {arch: build_backbone(arch, NUM_CLASSES).eval() for arch in ARCHITECTURES}


def images(resolution, n=2):
    return torch.randn(n, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_and_feature_shapes_at_default_resolution(nets, arch):
    net = nets[arch]
    assert net.resolution == default_resolution(arch) == ARCHITECTURES[arch].default_resolution
    pool5, fc6, fc7 = VECTOR_DIMS[arch]
    x = images(net.resolution)
    with torch.no_grad():
        logits = net(x)
        feats = net.features(x, layers=net.feature_layers)
    assert logits.shape == (2, NUM_CLASSES)
    assert feats["conv5"].shape[:2] == (2, net.trunk_channels) and feats["conv5"].dim() == 4
    assert feats["pool5"].shape == (2, pool5)
    if fc6 is None:
        assert net.fc6 is None and net.fc7 is None and net.feature_layers == ("conv5", "pool5")
        with pytest.raises(UserError, match="'fc7'.*expected some of conv5, pool5"):
            net.features(x, layers=("fc7",))
    else:
        assert feats["fc6"].shape == (2, fc6) and feats["fc7"].shape == (2, fc7)
        assert net.feature_dims() == {"pool5": pool5, "fc6": fc6, "fc7": fc7}
        assert (feats["fc7"] >= 0).all()  # after ReLU
        # fc7 is what the classifier reads: logits follow from it
        torch.testing.assert_close(net.classifier(feats["fc7"]), logits)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_head_maps_pooled_roi_features_like_the_backbone(nets, arch):
    net = nets[arch]
    head = net.head()
    rois = torch.rand(3, net.trunk_channels, net.roi_size, net.roi_size)
    with torch.no_grad():
        out = head(rois)
    assert out.shape == (3, net.head_dim)
    if net.fc6 is not None:
        assert head[1] is net.fc6 and head[2] is net.fc7  # shares the pre-trained weights
        with torch.no_grad():
            torch.testing.assert_close(out, net.fc7(net.fc6(rois.flatten(1))))


@pytest.mark.parametrize("resolution", [32, 64, 96, 128])
def test_small_takes_low_resolutions(resolution):
    net = build_backbone("small", 5, resolution=resolution)
    net.train()
    x = images(resolution, n=4)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert net.trunk[0].weight.grad is not None
    with torch.no_grad():
        feats = net.eval().features(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"pool5": (4, 2048), "fc6": (4, 512), "fc7": (4, 512)}


def test_dropout_defaults_and_override():
    assert build_backbone("small", 3).dropout == 0.3
    assert build_backbone("small", 3, dropout=0.1).fc6[2].p == 0.1
    assert build_backbone("resnet18", 3).config()["dropout"] == 0.0
    assert isinstance(build_backbone("resnet18", 3, dropout=0.2).pre_classifier, torch.nn.Dropout)


# BVLC Caffe, models/bvlc_reference_caffenet/train_val.prototxt (CaffeNet) and solver.prototxt, transcribed:
# the layers in order, with each learned layer's (num_output, kernel, stride, pad, group, weight std, bias value).
CAFFENET = [
    ("conv1", (96, 11, 4, 0, 1, 0.01, 0.0)),
    ("relu1", None),
    ("pool1", (3, 2)),  # MAX, kernel 3, stride 2 (Caffe rounds the output size up)
    ("norm1", (5, 1e-4, 0.75)),  # LRN local_size, alpha, beta
    ("conv2", (256, 5, 1, 2, 2, 0.01, 1.0)),
    ("relu2", None),
    ("pool2", (3, 2)),
    ("norm2", (5, 1e-4, 0.75)),
    ("conv3", (384, 3, 1, 1, 1, 0.01, 0.0)),
    ("relu3", None),
    ("conv4", (384, 3, 1, 1, 2, 0.01, 1.0)),
    ("relu4", None),
    ("conv5", (256, 3, 1, 1, 2, 0.01, 1.0)),
    ("relu5", None),
    ("pool5", (3, 2)),
    ("fc6", (4096, 0.005, 1.0, 0.5)),  # num_output, weight std, bias, dropout_ratio of drop6
    ("fc7", (4096, 0.005, 1.0, 0.5)),
    ("fc8", (1000, 0.01, 0.0, None)),
]
CAFFENET_PARAMS = {"lr_mult": (1, 2), "decay_mult": (1, 0)}  # (weights, biases) of every learned layer
CAFFENET_SOLVER = {"base_lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005, "gamma": 0.1, "stepsize": 100_000}


def test_caffe_alexnet_is_bvlc_reference_caffenet():
    torch.manual_seed(0)
    net = build_backbone("caffe_alexnet", 1000)
    trunk = list(net.trunk)
    kinds = {
        "conv": torch.nn.Conv2d,
        "relu": torch.nn.ReLU,
        "pool": torch.nn.MaxPool2d,
        "norm": torch.nn.LocalResponseNorm,
    }
    trunk_layers = [(name, spec) for name, spec in CAFFENET if not name.startswith("fc")]
    assert len(trunk) == len(trunk_layers)
    for module, (name, spec) in zip(trunk, trunk_layers):
        assert isinstance(module, kinds[name.rstrip("0123456789")]), (name, module)
        if name.startswith("conv"):
            out, k, stride, pad, group, std, bias = spec
            got = (module.out_channels, module.kernel_size, module.stride, module.padding, module.groups)
            assert got == (out, (k, k), (stride, stride), (pad, pad), group), name
            assert module.weight.std().item() == pytest.approx(std, rel=0.05), name
            assert module.bias.eq(bias).all(), name
        elif name.startswith("pool"):
            assert (module.kernel_size, module.stride, module.ceil_mode) == (*spec, True), name
        elif name.startswith("norm"):
            assert (module.size, module.alpha, module.beta, module.k) == (*spec, 1.0), name
    fcs = {"fc6": net.fc6, "fc7": net.fc7, "fc8": torch.nn.Sequential(net.classifier)}
    for name, spec in CAFFENET[-3:]:
        out, std, bias, dropout = spec
        block = list(fcs[name])
        assert block[0].out_features == out or name == "fc8", name
        assert block[0].weight.std().item() == pytest.approx(std, rel=0.05), name
        assert block[0].bias.eq(bias).all(), name
        if dropout is None:
            assert len(block) == 1
        else:  # fc → ReLU → dropout, Caffe's in-place order
            assert isinstance(block[1], torch.nn.ReLU) and block[2].p == dropout, name
    assert net.classifier.out_features == 1000
    # 227 crops → the 6×6×256 pool5 of the prototxt (Caffe's ceil rounding)
    assert net.features(torch.zeros(1, 3, 227, 227), ("conv5",))["conv5"].shape == (1, 256, 6, 6)


def test_caffe_alexnet_parameter_groups_follow_the_prototxt_multipliers():
    net = build_backbone("caffe_alexnet", 10)
    lr, decay = CAFFENET_SOLVER["base_lr"], CAFFENET_SOLVER["weight_decay"]
    weights, biases = parameter_groups(net, "caffe_alexnet", lr=lr, weight_decay=decay)
    learned = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(learned) == 8  # conv1-5, fc6-8
    assert {id(m.weight) for m in learned} == {id(p) for p in weights["params"]}
    assert {id(m.bias) for m in learned} == {id(p) for p in biases["params"]}
    assert (weights["lr"], biases["lr"]) == tuple(lr * m for m in CAFFENET_PARAMS["lr_mult"])
    assert (weights["weight_decay"], biases["weight_decay"]) == tuple(decay * m for m in CAFFENET_PARAMS["decay_mult"])
    # other architectures: one group, every parameter at the base rate and decay
    (only,) = parameter_groups(build_backbone("small", 10), "small", lr=lr, weight_decay=decay)
    assert (only["lr"], only["weight_decay"]) == (lr, decay)


def test_the_paper_recipe_is_the_caffenet_solver():
    from imagenet_transfer.pretrain_config import RECIPES

    paper = RECIPES["paper"]
    assert (paper["lr"], paper["momentum"], paper["weight_decay"]) == (
        CAFFENET_SOLVER["base_lr"],
        CAFFENET_SOLVER["momentum"],
        CAFFENET_SOLVER["weight_decay"],
    )
    assert paper["iterations"] == 450_000 and paper["batch_size"] == 256 and paper["decay"] == "step"
    assert paper["step_fraction"] * paper["iterations"] == pytest.approx(CAFFENET_SOLVER["stepsize"])


@pytest.mark.parametrize("arch", ["small", "resnet18", "caffe_alexnet"])
def test_config_rebuild_round_trip_gives_identical_outputs(nets, arch):
    net = nets[arch] if arch != "small" else build_backbone("small", NUM_CLASSES, resolution=48, dropout=0.2).eval()
    config = json.loads(json.dumps(net.config()))  # survives JSON (MLflow metadata)
    assert config == {"arch": arch, "num_classes": NUM_CLASSES, "resolution": net.resolution, "dropout": net.dropout}
    copy = rebuild(config, net.state_dict()).eval()
    x = images(net.resolution)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net(x), rtol=0, atol=0)


def test_rebuild_names_missing_unexpected_and_misshapen_keys():
    net = build_backbone("small", 4)
    state = dict(net.state_dict())
    del state["fc6.0.weight"], state["trunk.0.weight"]
    state["extra.bias"] = torch.zeros(1)
    state["classifier.bias"] = torch.zeros(9)
    with pytest.raises(UserError) as err:
        rebuild(net.config(), state)
    message = str(err.value)
    assert "missing keys ['fc6.0.weight', 'trunk.0.weight']" in message
    assert "unexpected keys ['extra.bias']" in message
    assert "classifier.bias (9,) vs (4,)" in message


def test_rebuild_rejects_bad_configs():
    net = build_backbone("small", 4)
    with pytest.raises(UserError, match=r"missing key\(s\) \[resolution\].*unknown key\(s\) \[lr\]"):
        rebuild({"arch": "small", "num_classes": 4, "dropout": 0.3, "lr": 0.1}, net.state_dict())
    with pytest.raises(UserError, match="unknown architecture 'vgg16'"):
        rebuild({**net.config(), "arch": "vgg16"}, net.state_dict())


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UserError) as err:
        build_backbone("alexnet2", 10)
    assert all(name in str(err.value) for name in ARCHITECTURES)


@pytest.mark.parametrize(
    ("arch", "resolution"),
    [("caffe_alexnet", 64), ("alexnet", 62), ("resnet18", 16), ("resnet50", 31), ("small", 16), ("small", 160)],
)
def test_resolution_the_architecture_cannot_take(arch, resolution):
    with pytest.raises(UserError, match=f"resolution {resolution} px is out of range for {arch}"):
        check_resolution(arch, resolution)


@pytest.mark.parametrize(("arch", "resolution"), [("caffe_alexnet", 100), ("alexnet", 63), ("resnet18", 32)])
def test_minimum_resolutions_work(arch, resolution):
    net = build_backbone(arch, 3, resolution=resolution).eval()
    with torch.no_grad():
        assert net(images(resolution, n=1)).shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 0}, {"num_classes": 2.5}, {"resolution": 64.0}, {"dropout": 1.0}, {"dropout": -0.1}]
)
def test_other_bad_arguments(kwargs):
    with pytest.raises(UserError):
        build_backbone("small", **{"num_classes": 3, **kwargs})
