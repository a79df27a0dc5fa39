"""Visual traits of every synset, inherited down the real WordNet tree (first-parent chains).

`class_traits(tax, seed)` gives each of the 1000 ILSVRC classes (and, on request, any synset of the
taxonomy table, e.g. PASCAL "cow") a `Traits` record that `draw.py` turns into pixels. How the values
are decided is described in the package docstring (`imagenet_transfer.synthetic`).
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from imagenet_transfer.taxonomy import PASCAL_SYNSETS, Taxonomy

FAMILIES = ("ellipse", "box", "triangle", "diamond", "star", "bean")
FIGURE = len(FAMILIES)  # the articulated person figure: everything below WordNet "person"
PART_KINDS = ("bar", "disc", "spike", "fork")
MARK_KINDS = ("dot", "ring", "bar", "cross", "pair")
TEXTURES = ("flat", "stripes", "dots", "checks", "grain")

# Grain of each trait: the trait is decided by the highest synset on the class's first-parent chain
# whose subtree holds at most this many ILSVRC classes, then refined by every synset below it.
GRAIN = {"family": 150, "layout": 60, "refine": 12, "leaf": 1}
REFINE_STEP = 0.4  # how far all deeper synsets together nudge a continuous trait (in units of its spread)


@dataclass(frozen=True)
class Part:
    kind: int  # index into PART_KINDS
    angle: float  # where on the body outline it is attached (radians, object frame)
    length: float  # in body radii
    width: float


@dataclass(frozen=True)
class Traits:
    wnid: str
    family: int  # index into FAMILIES, or FIGURE
    aspect: float  # body width / height factor
    fourier: tuple[float, ...]  # outline perturbation, cos/sin for harmonics 2..5
    parts: tuple[Part, ...]
    mark: tuple[int, float, float, float]  # (kind, x, y, size) of the inner detail mark
    hue: float  # mean hue of the body colour (per image it varies widely around it)
    texture: int  # preferred texture (used for half the images)
    build: float  # figure only: limb thickness; for other families a small outline tilt


def subtree_counts(tax: Taxonomy) -> Counter:
    """How many ILSVRC classes lie below each synset along first-parent chains."""
    counts: Counter = Counter()
    for wnid in tax.classes:
        counts.update(tax.path(wnid))
    return counts


@functools.cache
def _normals(seed: int, wnid: str, what: str, n: int) -> tuple[float, ...]:
    """`n` standard-normal values owned by (seed, synset, trait)."""
    rng = random.Random(hashlib.sha256(f"{seed}/{wnid}/{what}".encode()).digest())
    return tuple(rng.gauss(0.0, 1.0) for _ in range(n))


class TraitModel:
    """Draws trait values for synsets: one random draw per (synset, trait), inherited down the chain."""

    def __init__(self, tax: Taxonomy, seed: int):
        self.tax, self.seed = tax, seed
        self.counts = subtree_counts(tax)
        self.person = PASCAL_SYNSETS["person"]

    def decider(self, wnid: str, grain: int) -> tuple[str, list[str]]:
        """The synset that decides a trait of this grain for `wnid`, and the synsets below it (root first).

        A synset with no ILSVRC class below it (PASCAL "cow") decides only its leaf details; its coarser
        traits come from its deepest ancestor that has ILSVRC classes.
        """
        chain = list(reversed(self.tax.path(wnid)))  # root first
        for i, node in enumerate(chain):
            count = self.counts.get(node, 0)
            if count <= grain and (count > 0 or grain == 1):
                return node, chain[i + 1 :]
        i = max(i for i, node in enumerate(chain) if self.counts.get(node, 0) > 0)
        return chain[i], chain[i + 1 :]

    def draw(self, wnid: str, grain: str, what: str, n: int, refine: float = REFINE_STEP) -> np.ndarray:
        """`n` normal values: the decider's draw plus a nudge from each deeper synset.

        The nudges add up to at most `refine` standard deviations, however deep the chain is.
        """
        node, below = self.decider(wnid, GRAIN[grain])
        value = np.array(_normals(self.seed, node, what, n))
        step = refine / max(1.0, len(below)) ** 0.5
        for deeper in below:
            value = value + step * np.array(_normals(self.seed, deeper, what, n))
        return value

    def choice(self, wnid: str, grain: str, what: str, k: int) -> int:
        node, _ = self.decider(wnid, GRAIN[grain])
        return int(_uniform(_normals(self.seed, node, what, 1)[0]) * k) % k

    def traits(self, wnid: str) -> Traits:
        tax = self.tax
        figure = self.person in tax.all_ancestors(wnid)
        family = FIGURE if figure else self.choice(wnid, "family", "family", len(FAMILIES))
        hue = float(_uniform(self.draw(wnid, "family", "hue", 1, refine=0.1)[0]))
        aspect = float(np.exp(0.25 * self.draw(wnid, "layout", "aspect", 1)[0]))
        fourier = 0.06 * self.draw(wnid, "refine", "fourier", 6)
        fourier = np.concatenate([fourier, 0.05 * self.draw(wnid, "leaf", "fourier-leaf", 2)])
        parts = []
        for slot, grain in enumerate(("layout", "layout", "refine", "refine", "leaf")):
            present = self.draw(wnid, grain, f"part{slot}-present", 1)[0] > (-0.3 if slot < 2 else 0.0)
            if slot == 4:
                present = True  # every class has its own detail part
            if not present:
                continue
            v = self.draw(wnid, grain, f"part{slot}", 4)
            parts.append(
                Part(
                    kind=self.choice(wnid, grain, f"part{slot}-kind", len(PART_KINDS)),
                    angle=float(np.arctan2(v[0], v[1])),
                    length=float(0.35 + 0.25 * _uniform(v[2]) + (0.15 if slot < 2 else 0.0)),
                    width=float(0.16 + 0.14 * _uniform(v[3])),
                )
            )
        m = self.draw(wnid, "leaf", "mark", 3)
        mark = (
            self.choice(wnid, "leaf", "mark-kind", len(MARK_KINDS)),
            float(0.35 * np.tanh(m[0])),
            float(0.35 * np.tanh(m[1])),
            float(0.22 + 0.1 * _uniform(m[2])),
        )
        return Traits(
            wnid=wnid,
            family=family,
            aspect=aspect,
            fourier=tuple(float(f) for f in fourier),
            parts=tuple(parts),
            mark=mark,
            hue=hue,
            texture=self.choice(wnid, "layout", "texture", len(TEXTURES)),
            build=float(0.8 + 0.4 * _uniform(self.draw(wnid, "layout", "build", 1)[0])),
        )


def _uniform(z: float) -> float:
    """Map a standard-normal value to [0, 1) (its normal CDF, via erf-free logistic approximation)."""
    return float(1.0 / (1.0 + np.exp(-1.702 * z)))


@functools.lru_cache(maxsize=4)
def model(seed: int) -> TraitModel:
    from imagenet_transfer.taxonomy import load_taxonomy

    return TraitModel(load_taxonomy(), seed)


def traits_for(wnids, seed: int) -> dict[str, Traits]:
    m = model(seed)
    return {w: m.traits(w) for w in wnids}
