"""Readers for SUN397: `Partitions/ClassName.txt`, `Training_NN.txt` / `Testing_NN.txt`, image paths.

Input: a SUN397 root holding the images (`SUN397/<letter>/<class>/sun_*.jpg`, or the letters directly)
and the partitions (`Partitions/`, next to `SUN397/` or inside it). Classes are paths like `/a/abbey`
or nested `/d/desert/sand`; list entries are image paths like `/a/abbey/sun_aqswjsnjlrfzzhiz.jpg`.

    layout = find_sun397(root)
    classes = read_class_names(layout.partitions / "ClassName.txt")   # ["/a/abbey", ...]
    train = read_partition(layout.partitions / "Training_01.txt")     # ["/a/abbey/sun_...jpg", ...]
    class_of(train[0])                                                # "/a/abbey"
    layout.image(train[0])                                            # absolute Path of the image
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagenet_transfer.errors import UserError

PARTITION_FILE = re.compile(r"(Training|Testing)_(\d{2})\.txt")


@dataclass(frozen=True)
class SUN397Layout:
    images: Path  # folder holding the letter folders a/ b/ ...
    partitions: Path  # folder holding ClassName.txt and the Training/Testing lists

    def image(self, entry: str) -> Path:
        return self.images / entry.lstrip("/")

    def partition_ids(self) -> list[int]:
        found = {int(m[2]) for p in self.partitions.iterdir() if (m := PARTITION_FILE.fullmatch(p.name))}
        return sorted(found)


def find_sun397(root: str | Path) -> SUN397Layout:
    """Locate images and partitions under `root` (the layouts of the official archives)."""
    root = Path(root)
    images = root / "SUN397" if (root / "SUN397").is_dir() else root
    for partitions in (root / "Partitions", images / "Partitions", root.parent / "Partitions"):
        if (partitions / "ClassName.txt").is_file():
            return SUN397Layout(images, partitions)
    raise UserError(
        f"{root}: no Partitions/ClassName.txt found next to or inside the SUN397 images; "
        "expected SUN397/<letter>/<class>/*.jpg and Partitions/{ClassName,Training_01,Testing_01}.txt"
    )


def read_class_names(path: str | Path) -> list[str]:
    """ClassName.txt: one class path per line, `/a/abbey`."""
    entries = _lines(path)
    bad = [e for e in entries if not re.fullmatch(r"/[a-z]/[^/\s]+(/[^/\s]+)?", e)]
    if bad:
        raise UserError(f"{path}: {bad[0]!r} is not a SUN397 class; expected lines like /a/abbey or /d/desert/sand")
    return entries


def read_partition(path: str | Path) -> list[str]:
    """Training_NN.txt / Testing_NN.txt: one image path per line, `/a/abbey/sun_xxx.jpg`."""
    entries = _lines(path)
    bad = [e for e in entries if not (e.startswith("/") and e.count("/") >= 3)]
    if bad:
        raise UserError(f"{path}: {bad[0]!r} is not a SUN397 image path; expected lines like /a/abbey/sun_xxx.jpg")
    return entries


def class_of(entry: str) -> str:
    """The class of an image path: everything before the file name (`/d/desert/sand/sun_x.jpg` -> `/d/desert/sand`)."""
    return entry.rsplit("/", 1)[0]


def class_folder_name(cls: str) -> str:
    """A readable label: `/d/desert/sand` -> `desert/sand`."""
    return cls.split("/", 2)[2]


def _lines(path: str | Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
