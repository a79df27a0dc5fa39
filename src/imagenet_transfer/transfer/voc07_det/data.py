"""PASCAL-DET's data: the VOC2007 images of an image set with their objects, as detector inputs and targets.

root = find_voc2007("")                        # "": the embedded world's VOC2007; or a VOCdevkit folder
samples = load_split(root, "trainval")         # [Sample(image_id, path, width, height, boxes, labels, difficult)]
training_target(samples[0])                    # torchvision target: non-difficult boxes, 0-based corners
image_loader(samples, [[0, 1], [2, 3]], 0)     # batches of (index, uint8 image)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from imagenet_transfer.datasets.voc import VOC_CLASSES, read_annotation, read_image_set
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import world_part


@dataclass(frozen=True)
class Sample:
    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) VOC boxes, 1-based inclusive, every object
    labels: np.ndarray  # (N,) indices into VOC_CLASSES
    difficult: np.ndarray  # (N,) bool


def find_voc2007(data: str | Path = "") -> Path:
    """The VOC2007 folder `data` names (itself, or its VOCdevkit/VOC2007 or VOC2007); "" = the embedded world's."""
    if not str(data):
        return world_part("voc2007")
    root = Path(data)
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise UserError(
        f"{root}: not a VOC2007 folder; expected VOCdevkit/VOC2007 with Annotations/, JPEGImages/ and "
        "ImageSets/Main/{trainval,test}.txt"
    )


def load_split(root: Path, image_set: str) -> list[Sample]:
    """The images of `ImageSets/Main/<image_set>.txt` with their objects; UserError naming what is missing."""
    listing = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise UserError(f"{listing}: image set {image_set!r} not found; expected one of {', '.join(have) or 'none'}")
    ids = read_image_set(listing)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{listing}: expected one image id per line, found {len(ids)} lines of other form")
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise UserError(f"{listing}: {len(dupes)} image id(s) listed more than once: {dupes[:5]}")
    missing_xml = [i for i in ids if not (root / "Annotations" / f"{i}.xml").is_file()]
    if missing_xml:
        raise UserError(
            f"{root / 'Annotations'}: {len(missing_xml)} of the {len(ids)} annotations of {image_set!r} "
            f"are missing, e.g. {', '.join(f'{i}.xml' for i in missing_xml[:5])}"
        )
    samples, missing_jpg = [], []
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        ann = read_annotation(xml)
        unknown = sorted({o.name for o in ann.objects} - set(VOC_CLASSES))
        if unknown:
            raise UserError(f"{xml}: unknown class(es) {unknown}; expected the 20 VOC classes")
        if ann.width <= 0 or ann.height <= 0:
            raise UserError(f"{xml}: missing or empty <size>; expected <width> and <height>")
        path = root / "JPEGImages" / ann.filename
        if not path.is_file():
            missing_jpg.append(path.name)
        boxes = np.array([o.box for o in ann.objects], float).reshape(-1, 4)
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            raise UserError(f"{xml}: box {boxes[bad][0].tolist()} has xmax < xmin or ymax < ymin")
        samples.append(
            Sample(
                image_id,
                path,
                ann.width,
                ann.height,
                boxes,
                np.array([VOC_CLASSES.index(o.name) for o in ann.objects], int),
                np.array([o.difficult for o in ann.objects], bool),
            )
        )
    if missing_jpg:
        raise UserError(
            f"{root / 'JPEGImages'}: {len(missing_jpg)} of the {len(ids)} images of {image_set!r} are "
            f"missing, e.g. {', '.join(missing_jpg[:5])}"
        )
    return samples


def training_target(sample: Sample) -> dict[str, Tensor]:
    """torchvision target: non-difficult objects, boxes as continuous 0-based corners (VOC pixel i spans [i-1, i])."""
    keep = ~sample.difficult
    boxes = sample.boxes[keep].copy()
    boxes[:, :2] -= 1.0
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(sample.labels[keep] + 1, dtype=torch.int64),
    }


def to_voc_boxes(boxes: Tensor) -> np.ndarray:
    """Detector output (continuous 0-based corners) → VOC boxes (1-based inclusive): the inverse of the above."""
    out = boxes.detach().cpu().double().numpy().reshape(-1, 4).copy()
    out[:, :2] += 1.0
    return out


class _Images(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        sample = self.samples[i]
        try:
            image = decode_image(read_file(str(sample.path)), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise UserError(f"{sample.path}: cannot decode image ({err})") from None
        if tuple(image.shape[1:]) != (sample.height, sample.width):
            raise UserError(
                f"{sample.path}: image is {image.shape[2]}×{image.shape[1]} px but its annotation says "
                f"{sample.width}×{sample.height}"
            )
        return i, image


def image_loader(samples: Sequence[Sample], batches: list[list[int]], workers: int) -> torch.utils.data.DataLoader:
    """The given batches of sample indices as lists of (index, uint8 3×H×W image), decoded by `workers` processes."""
    return torch.utils.data.DataLoader(
        _Images(samples), batch_sampler=batches, num_workers=workers, collate_fn=_as_list
    )


def _as_list(items: list) -> list:
    return items
