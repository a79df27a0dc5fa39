"""Input pipeline: decoding, transforms, normalisation, corrupt images, seeded order and exact resume."""

import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from imagenet_transfer.data import (
    NORMALISATION,
    PRESETS,
    EpochSampler,
    ManifestDataset,
    Transform,
    decode,
    epoch_order,
    make_loader,
    normalise,
    resize_size,
)
from imagenet_transfer.errors import UserError

RES = 32
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not a dependency here)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """18 train + 4 val images of 3 classes: RGB of several sizes, greyscale, CMYK, and one corrupt JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(22):
        label = i % 3
        path = root / f"img{i:02d}.JPEG"
        size = (40 + 3 * i, 30 + 2 * i)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        if i == 4:
            Image.fromarray(pixels[..., 0], "L").save(path)
        elif i == 5:
            Image.fromarray(np.concatenate([pixels, pixels[..., :1]], axis=2), "CMYK").save(path)
        elif i == 7:
            path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
        else:
            Image.fromarray(pixels).save(path, quality=90)
        rows.append(
            {
                "path": str(path),
                "wnid": f"n0000000{label}",
                "label": label,
                "label_wnid": f"n0000000{label}",
                "split": "train" if i < 18 else "val",
            }
        )
    uniform = root / "uniform.JPEG"  # one flat grey val image, to check normalisation values
    Image.fromarray(np.full((50, 60, 3), 128, np.uint8)).save(uniform, quality=100)
    rows.append({"path": str(uniform), "wnid": "n00000000", "label": 0, "label_wnid": "n00000000", "split": "val"})
    frame = pd.DataFrame(rows)
    frame["label"] = frame["label"].astype("int64")
    return frame


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb)


def test_decode_converts_greyscale_and_cmyk_to_rgb(manifest):
    for i in (0, 4, 5):
        image = decode(manifest.path[i])
        assert image.dtype == torch.uint8 and image.shape == (3, 30 + 2 * i, 40 + 3 * i)


def test_train_batches_shapes_dtypes_and_skipped_corrupt_image(manifest):
    loader = make_loader(manifest, "train", arch="small", resolution=RES, batch_size=4, train=True, seed=0)
    assert len(loader) == 18 // 4
    got = batches(loader)
    assert len(got) == 4
    for images, labels in got:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, RES, RES)
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    sizes = sorted(len(y) for _, y in got)
    corrupt = manifest.path[7]
    assert 7 in epoch_order(18, 0, 0)[:16]  # seed 0 draws the corrupt image: dropped from its batch, recorded
    assert sizes == [3, 4, 4, 4] and list(loader.skipped) == [corrupt]
    assert loader.seen == 16 and loader.check_skipped(0.1) == 1
    with pytest.raises(UserError, match=f"1 of 16 images could not be read.*{corrupt}"):
        loader.check_skipped(0.01)
    loader.set_epoch(1)  # a second epoch meets the corrupt file again: the fraction stays that of one epoch
    batches(loader)
    assert loader.seen == 32 and loader.skip_events == 2 and list(loader.skipped) == [corrupt]
    assert loader.check_skipped(1 / 16) == 1


def test_eval_loader_visits_every_image_once_and_counts_the_corrupt_one(manifest):
    train_as_eval = make_loader(manifest, "train", arch="small", resolution=RES, batch_size=5, train=False)
    labels = torch.cat([y for _, y in train_as_eval])
    expected = manifest[manifest.split == "train"].drop(index=7).label.tolist()
    assert labels.tolist() == expected  # manifest order, corrupt image dropped
    assert train_as_eval.seen == 18 and list(train_as_eval.skipped) == [manifest.path[7]]
    assert train_as_eval.skipped[manifest.path[7]]  # the decoder's reason


def test_normalisation_per_architecture(manifest):
    val = manifest[manifest.split == "val"]
    for arch, norm in (("small", "imagenet"), ("caffe_alexnet", "caffe")):
        loader = make_loader(val, "val", arch=arch, batch_size=8, train=False)
        images, _ = next(iter(loader))
        grey = images[-1]  # the uniform 128 image
        mean, std = NORMALISATION[norm]["mean"], NORMALISATION[norm]["std"]
        for c in range(3):
            torch.testing.assert_close(grey[c], torch.full_like(grey[c], (128 - mean[c]) / std[c]), atol=0.05, rtol=0)
    train = make_loader(manifest, "train", arch="small", resolution=RES, batch_size=4, train=True, preset="center")
    images, _ = next(iter(train))  # the loader's output is the dataset's uint8 crop, normalised
    keys = list(train.sampler)[:4]
    crops = [ManifestDataset(manifest[manifest.split == "train"], Transform("center", RES))[k] for k in keys]
    crops = torch.stack([c[0] for c in crops if isinstance(c, tuple)])
    torch.testing.assert_close(images, normalise(crops, "imagenet"))
    torch.testing.assert_close(
        normalise(torch.full((3, 2, 2), 255, dtype=torch.uint8), "caffe")[:, 0, 0],
        torch.tensor([255 - 123.68, 255 - 116.78, 255 - 103.94]),
    )


def test_transforms_resize_crop_and_mirror():
    image = torch.arange(3 * 40 * 50, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(3, 40, 50)
    assert resize_size(227) == 256 and resize_size(64) == 72
    center = Transform("center", 64)
    assert torch.equal(center(image, None), center(image, None)) and center(image, None).shape == (3, 64, 64)
    paper = Transform("paper", 64)
    crops = {paper(image, random.Random(s)).sum().item() for s in range(20)}
    assert len(crops) > 5  # random crops and mirrors differ
    assert torch.equal(paper(image, random.Random(3)), paper(image, random.Random(3)))
    assert Transform("rrc", 48)(image, random.Random(0)).shape == (3, 48, 48)
    with pytest.raises(UserError, match="unknown transform preset 'imagenet'.*" + ", ".join(PRESETS)):
        Transform("imagenet", 64)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(100, seed=1, epoch=2)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(100, seed=1, epoch=2))
    assert not np.array_equal(a, epoch_order(100, seed=1, epoch=3))
    assert not np.array_equal(a, epoch_order(100, seed=2, epoch=2))


def test_seeded_batches_are_reproducible_and_independent_of_workers(manifest):
    kwargs = dict(arch="small", resolution=RES, batch_size=4, train=True, seed=5, epoch=1)
    first = batches(make_loader(manifest, "train", **kwargs))
    assert_same(first, batches(make_loader(manifest, "train", **kwargs)))
    assert_same(first, batches(make_loader(manifest, "train", workers=2, **kwargs)))
    other_epoch = batches(make_loader(manifest, "train", **{**kwargs, "epoch": 2}))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other_epoch))


@pytest.mark.parametrize("k", [1, 3])
def test_resume_at_start_batch_yields_the_rest_of_the_epoch(manifest, k):
    kwargs = dict(arch="small", resolution=RES, batch_size=4, train=True, seed=11, epoch=4)
    whole = batches(make_loader(manifest, "train", **kwargs))
    resumed = make_loader(manifest, "train", start_batch=k, **kwargs)
    assert len(resumed) == len(whole) - k
    assert_same(batches(resumed), whole[k:])
    resumed.set_epoch(5)  # the next epoch starts from its beginning again
    assert len(resumed) == len(whole)


def test_sampler_shards_are_disjoint_and_equal():
    shards = [list(EpochSampler(23, batch_size=3, seed=0, epoch=0, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 9
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    evals = [
        [i for i, _ in EpochSampler(23, batch_size=3, shuffle=False, drop_last=False, rank=r, world_size=2)]
        for r in range(2)
    ]
    assert sorted(evals[0] + evals[1]) == list(range(23))


def test_dataset_returns_uint8_crops(manifest):
    dataset = ManifestDataset(manifest, Transform("center", RES))
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (3, RES, RES) and label == 0


def test_bad_input(manifest, tmp_path):
    common = dict(arch="small", batch_size=2, train=True)
    with pytest.raises(UserError, match="unknown split 'test'"):
        make_loader(manifest, "test", **common)
    with pytest.raises(UserError, match="lacks column"):
        make_loader(manifest.drop(columns="label"), "train", **common)
    with pytest.raises(UserError, match="unknown architecture"):
        make_loader(manifest, "train", **{**common, "arch": "vgg"})
    with pytest.raises(UserError, match="resolution 8 px is out of range"):
        make_loader(manifest, "train", resolution=8, **common)
    with pytest.raises(UserError, match="unknown transform preset"):
        make_loader(manifest, "train", preset="fancy", **common)
    with pytest.raises(UserError, match="cannot fill one batch"):
        make_loader(manifest, "train", **{**common, "batch_size": 64})
    with pytest.raises(UserError, match="start_batch 99"):
        make_loader(manifest, "train", start_batch=99, **common)
    with pytest.raises(UserError, match="cannot be read as Parquet"):
        make_loader(tmp_path / "missing.parquet", "train", **common)
    path = tmp_path / "manifest.parquet"
    manifest.to_parquet(path)
    assert len(make_loader(path, "val", arch="small", batch_size=2, train=False)) == 3
