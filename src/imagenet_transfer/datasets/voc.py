"""Readers for PASCAL VOC 2007 (detection) and VOC 2012 (action) in their original on-disk format.

Input: a `VOCdevkit/VOC20NN` folder: `Annotations/<id>.xml`, `JPEGImages/<id>.jpg`,
`ImageSets/Main/{train,val,trainval,test}.txt` and `<class>_<set>.txt` (`<id> <flag>`, flag 1 / -1 /
0 = only difficult objects), `ImageSets/Action/<set>.txt` and `<action>_<set>.txt`
(`<id> <object index> <flag>`). Files written on Windows (CRLF) read the same.

    objects = read_annotation(root / "Annotations" / "000005.xml")
    ids = read_image_set(root / "ImageSets" / "Main" / "trainval.txt")        # ["000005", ...]
    flags = read_image_set(root / "ImageSets" / "Main" / "cat_trainval.txt")  # [("000005", -1), ...]
Boxes are kept exactly as in the file (1-based, inclusive pixel coordinates).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from imagenet_transfer.errors import UserError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_ACTIONS = (
    "jumping",
    "phoning",
    "playinginstrument",
    "reading",
    "ridingbike",
    "ridinghorse",
    "running",
    "takingphoto",
    "usingcomputer",
    "walking",
)


@dataclass(frozen=True)
class VOCObject:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    pose: str = "Unspecified"
    actions: dict[str, bool] | None = None  # VOC2012 action annotations: {action: present}

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.xmin, self.ymin, self.xmax, self.ymax


@dataclass(frozen=True)
class Annotation:
    filename: str
    width: int
    height: int
    objects: tuple[VOCObject, ...]


def read_annotation(xml_path: str | Path) -> Annotation:
    """Parse one VOC XML file (detection or action)."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise UserError(f"{path}: cannot read VOC annotation ({err}); expected a VOC XML file") from None
    if root.tag != "annotation":
        raise UserError(f"{path}: root element is <{root.tag}>; expected <annotation>")
    size = root.find("size")
    width = int(_num(size, "width", path)) if size is not None else 0
    height = int(_num(size, "height", path)) if size is not None else 0
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"{path}: an <object> has no <bndbox>; expected xmin, ymin, xmax, ymax")
        acts = obj.find("actions")
        objects.append(
            VOCObject(
                name=(obj.findtext("name") or "").strip(),
                xmin=_num(bb, "xmin", path),
                ymin=_num(bb, "ymin", path),
                xmax=_num(bb, "xmax", path),
                ymax=_num(bb, "ymax", path),
                difficult=_flag(obj.findtext("difficult")),
                truncated=_flag(obj.findtext("truncated")),
                pose=(obj.findtext("pose") or "Unspecified").strip(),
                actions=None if acts is None else {a.tag: _flag(a.text) for a in acts},
            )
        )
    return Annotation((root.findtext("filename") or f"{path.stem}.jpg").strip(), width, height, tuple(objects))


def read_image_set(path: str | Path) -> list:
    """An ImageSets list: ids (one column), `(id, flag)` (per-class lists) or `(id, object, flag)` (action lists)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read image set ({err})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        try:
            rows.append(fields[0] if len(fields) == 1 else (fields[0], *(int(f) for f in fields[1:])))
        except ValueError:
            raise UserError(
                f"{path}:{n}: {line.strip()!r}; expected '<id>', '<id> <flag>' or '<id> <object> <flag>'"
            ) from None
    return rows


def _num(node, tag: str, path: Path) -> float:
    text = node.findtext(tag) if node is not None else None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{path}: <{tag}> is {text!r}; expected a number") from None
    return int(value) if value.is_integer() else value


def _flag(text: str | None) -> bool:
    return (text or "0").strip() not in ("0", "", "-1")
