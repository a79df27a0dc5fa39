"""The WordNet 3.0 noun graph of the 1000 ILSVRC-2012 classes, and the label sets of the study.

Input: `resources/wordnet_ilsvrc.tsv` (made by `scripts/build_taxonomy.py`; no WordNet at run time).
Output: plain values: label maps `{fine wnid: label wnid}`, class lists, splits.

    tax = load_taxonomy()
    tax.levels("bottom-up")                     # [999, 977, 918, ..., 1]   (PAPER.md, E2)
    tax.labels("top-down", 127)["n02085620"]    # Chihuahua's label in the 127-class set (E3)
    tax.pascal_removed()                        # the 771 classes of E6

Rules (PAPER.md): the parent of a synset is its first `@` hypernym in NLTK's order (sorted by synset
name); depth counts first-parent steps to `entity`.
"""

from __future__ import annotations

import csv
import functools
import random
from dataclasses import dataclass
from importlib import resources

from imagenet_transfer.errors import UserError

METHODS = ("bottom-up", "top-down")
SPLITS = ("random", "minimal")

PASCAL_SYNSETS = {
    "aeroplane": "n02691156",
    "bicycle": "n02834778",
    "bird": "n01503061",
    "boat": "n02858304",
    "bottle": "n02876657",
    "bus": "n02924116",
    "car": "n02958343",
    "cat": "n02121620",
    "chair": "n03001627",
    "cow": "n01887787",
    "diningtable": "n03201208",
    "dog": "n02084071",
    "horse": "n02374451",
    "motorbike": "n03769722",
    "person": "n00007846",
    "pottedplant": "n00017222",
    "sheep": "n02411705",
    "sofa": "n04256520",
    "train": "n04468005",
    "tvmonitor": "n03782006",
}


@dataclass(frozen=True)
class Synset:
    wnid: str
    synset: str  # NLTK name, e.g. "dog.n.01"
    parents: tuple[str, ...]  # `@` hypernyms in NLTK order; parents[0] is "the parent"
    name: str


class Taxonomy:
    """The ILSVRC classes (`classes`, sorted by wnid = label order 0..999) and their ancestors."""

    def __init__(self, synsets: dict[str, Synset], classes: list[str]):
        self.synsets = synsets
        self.classes = classes
        self._paths: dict[str, tuple[str, ...]] = {}
        self._path_sets: dict[str, frozenset[str]] = {}

    # -- the graph ---------------------------------------------------------------------------
    def __contains__(self, wnid: str) -> bool:
        return wnid in self.synsets

    def name(self, wnid: str) -> str:
        return self.synsets[wnid].name

    def parent(self, wnid: str) -> str | None:
        parents = self.synsets[wnid].parents
        return parents[0] if parents else None

    def depth(self, wnid: str) -> int:
        return len(self.path(wnid)) - 1

    def path(self, wnid: str) -> tuple[str, ...]:
        """First-parent chain from `wnid` up to the root, `wnid` first."""
        if wnid not in self._paths:
            parent = self.parent(wnid)
            self._paths[wnid] = (wnid,) + (() if parent is None else self.path(parent))
        return self._paths[wnid]

    def is_below(self, wnid: str, ancestor: str) -> bool:
        """True when `ancestor` is on `wnid`'s first-parent chain (a synset is below itself)."""
        if wnid not in self._path_sets:
            self._path_sets[wnid] = frozenset(self.path(wnid))
        return ancestor in self._path_sets[wnid]

    def all_ancestors(self, wnid: str) -> set[str]:
        """Every hypernym reachable through any `@` pointer, `wnid` included."""
        seen, todo = set(), [wnid]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self.synsets[node].parents)
        return seen

    def check_wnids(self, wnids, what: str = "wnid") -> list[str]:
        unknown = sorted(set(wnids) - set(self.classes))
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise UserError(f"unknown {what}: {shown}; expected ILSVRC-2012 class wnids like n01440764")
        return list(wnids)

    # -- label sets (E2, E3) -----------------------------------------------------------------
    def levels(self, method: str) -> list[int]:
        """Class counts of the label sets `method` produces, finest first."""
        return [len(set(level.values())) for level in self._levels(_check_method(method))]

    def labels(self, method: str, classes: int) -> dict[str, str]:
        """Map every ILSVRC class to its label in the `method` label set with `classes` labels."""
        for level in self._levels(_check_method(method)):
            if len(set(level.values())) == classes:
                return dict(level)
        raise UserError(
            f"no {method} label set has {classes} classes; available: {', '.join(map(str, self.levels(method)))}"
        )

    @functools.cache  # noqa: B019 - a taxonomy lives as long as the process; its levels are computed once
    def _levels(self, method: str) -> tuple[dict[str, str], ...]:
        return tuple(self._bottom_up() if method == "bottom-up" else self._top_down())

    def _bottom_up(self) -> list[dict[str, str]]:
        """Replace the deepest labels by their parents, one depth at a time, until one label is left."""
        label = {wnid: wnid for wnid in self.classes}
        max_depth = max(self.depth(w) for w in self.classes)
        levels = []
        while len(set(label.values())) > 1:
            label = {w: self.parent(a) if self.depth(a) == max_depth else a for w, a in label.items()}
            max_depth -= 1
            levels.append(label)
        return levels

    def _top_down(self, rounds: int = 3) -> list[dict[str, str]]:
        """Lift every label to its parent, then fold each label into the first label above it."""
        labels = list(self.classes)
        levels = []
        for _ in range(rounds):
            labels = [self.parent(a) or a for a in labels]
            for j in range(len(labels)):
                for k in range(len(labels)):
                    if labels[k] != labels[j] and self.is_below(labels[k], labels[j]):
                        labels[k] = labels[j]
            levels.append(dict(zip(self.classes, labels)))
        return levels

    # -- class selections (E5, E6, E7) ---------------------------------------------------------
    def pascal_overlap(self) -> dict[str, list[str]]:
        """PASCAL category -> the ILSVRC classes below its synset (any hypernym path)."""
        return {
            category: sorted(w for w in self.classes if synset in self.all_ancestors(w))
            for category, synset in PASCAL_SYNSETS.items()
        }

    def pascal_removed(self) -> list[str]:
        removed = {w for ws in self.pascal_overlap().values() for w in ws}
        return [w for w in self.classes if w not in removed]

    def random_classes(self, wnids: list[str], count: int, seed: int) -> list[str]:
        wnids = sorted(wnids)
        if not 1 <= count <= len(wnids):
            raise UserError(f"cannot choose {count} classes out of {len(wnids)}; expected 1..{len(wnids)}")
        return sorted(random.Random(seed).sample(wnids, count))

    def split(self, wnids: list[str], method: str, seed: int = 0) -> tuple[list[str], list[str]]:
        """Two halves (A, B) of `wnids`: a seeded random split, or a minimal one (PAPER.md, E7).

        The minimal split assigns whole first-parent subtrees to one side: starting from the
        children of the lowest node that holds all classes, it looks for subtrees whose class
        counts add up to exactly half (a subset-sum over subtree sizes); while none exists it opens
        the largest subtree into its children. Only ancestors of opened subtrees are then shared.
        """
        wnids = sorted(set(wnids))
        if len(wnids) < 2:
            raise UserError(f"cannot split {len(wnids)} class into halves; expected at least 2 classes")
        if method == "random":
            shuffled = random.Random(seed).sample(wnids, len(wnids))
            return sorted(shuffled[: len(wnids) // 2]), sorted(shuffled[len(wnids) // 2 :])
        if method != "minimal":
            raise UserError(f"unknown split method {method!r}; expected one of: {', '.join(SPLITS)}")
        return self._minimal_split(wnids)

    def _minimal_split(self, wnids: list[str]) -> tuple[list[str], list[str]]:
        paths = {w: self.path(w)[::-1] for w in wnids}  # root first

        def open_unit(node: str, members: list[str]) -> list[tuple[str, list[str]]]:
            groups: dict[str, list[str]] = {}
            for w in members:
                i = paths[w].index(node)
                groups.setdefault(paths[w][i + 1] if i + 1 < len(paths[w]) else w, []).append(w)
            return sorted(groups.items())

        units = [(paths[wnids[0]][0], wnids)]
        while (chosen := _subset_sum([len(m) for _, m in units], len(wnids) // 2)) is None:
            largest = max(range(len(units)), key=lambda i: (len(units[i][1]), units[i][0]))
            node, members = units.pop(largest)
            units += open_unit(node, members)
        half_a = sorted(w for i in chosen for w in units[i][1])
        return half_a, sorted(set(wnids) - set(half_a))


def _subset_sum(sizes: list[int], target: int) -> list[int] | None:
    """Indices of `sizes` summing exactly to `target` (fewest, largest units first), or None."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    reach: dict[int, list[int]] = {0: []}
    for i in order:
        for total, picked in list(reach.items()):
            new = total + sizes[i]
            if new <= target and new not in reach:
                reach[new] = [*picked, i]
    return reach.get(target)


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown label method {method!r}; expected one of: {', '.join(METHODS)}")
    return method


@functools.cache
def load_taxonomy() -> Taxonomy:
    table = resources.files("imagenet_transfer").joinpath("resources/wordnet_ilsvrc.tsv")
    synsets, classes = {}, {}
    with table.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            synsets[row["wnid"]] = Synset(row["wnid"], row["synset"], tuple(row["parents"].split()), row["name"])
            if int(row["ilsvrc"]) >= 0:
                classes[int(row["ilsvrc"])] = row["wnid"]
    return Taxonomy(synsets, [classes[i] for i in range(len(classes))])
