"""Backbones: shapes of every architecture, feature layers, config → rebuild round trip, bad input."""

import json

import pytest
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.models import ARCHITECTURES, build_backbone, check_resolution, default_resolution, rebuild

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


def test_caffe_alexnet_layers_follow_the_paper(nets):
    net = nets["caffe_alexnet"]
    convs = [m for m in net.trunk if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.groups) for c in convs] == [
        (96, 11, 4, 1),
        (256, 5, 1, 2),
        (384, 3, 1, 1),
        (384, 3, 1, 2),
        (256, 3, 1, 2),
    ]
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in net.trunk) == 2
    assert net.fc6[2].p == net.fc7[2].p == 0.5
    assert net.fc6[0].bias.eq(1).all() and net.classifier.bias.eq(0).all()


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
