"""The embedded synthetic world: ImageNet-, VOC- and SUN397-format data drawn from the real WordNet tree.

    imagenet-transfer synth --size tiny                 # ~3 s; default size ~1 min on 2 cores
    root = generate(size="tiny", seed=0)                # Path of the world (cached: found again in < 1 s)
    root = generate(parts=("imagenet",))                # only what pre-training reads; the rest added on demand
    world = read_world(root)                            # world.json, after cheap completeness checks

Output (a folder, by default `cache_dir()/worlds/v2-<size>-r<px>-s<seed>`):
  imagenet/{train,val}/<wnid>/<wnid>_<n>.JPEG      pre-training source (catalogued on creation)
  VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}     detection, 20 PASCAL classes
  VOCdevkit/VOC2012/{JPEGImages,Annotations,ImageSets/Action}   action classification, 10 actions
  SUN397/<letter>/<class>/sun_*.jpg, Partitions/{ClassName,Training_NN,Testing_NN}.txt
  world.json   written last: generator version, options, seed, classes, counts, per-folder file
               counts / bytes / SHA-256 of the file list and contents (`verify_world` re-hashes)
Same seed and options give byte-identical files on the same library versions (Pillow's JPEG encoder).

How appearance is assigned (traits.py). Every synset gets random draws keyed by (seed, wnid, trait),
so a synset looks the same in every world of a seed, whichever classes were chosen. A trait has a
*grain* N: it is decided by the highest synset on the class's first-parent chain whose subtree holds
at most N of the 1000 ILSVRC classes ("the decider"), and every synset below the decider, down to the
leaf, nudges its continuous values a little (all nudges together: 0.4 of their spread; 0.1 for hue):
  - family (ellipse, box, triangle, diamond, star, bean; grain 150) and palette hue (grain 150): e.g.
    all dogs (118 classes) share one; everything below WordNet "person" is an articulated figure;
  - aspect ratio, parts 1-2 (kind: bar/disc/spike/fork, place on the outline, size) and the preferred
    texture (grain 60): the part layout of a coarse group;
  - outline harmonics 2-4 and parts 3-4 (grain 12): refinements shared by close relatives;
  - part 5, the inner mark (dot/ring/bar/cross/pair, place, size) and harmonic 5 (grain 1: the leaf):
    the class's own details, what tells sibling classes apart.
So classes below the same coarse ancestor share family, hue and part layout, and differ in details.
Shortcut traits are shared on purpose: the body hue of an image is drawn around the coarse group's
hue (+-0.12), with random saturation and value; the texture is the group's preferred one only half the
time, otherwise random; part and mark colours are random shades. Colour and texture therefore cannot
tell fine classes apart; shape and parts can.
Nuisances per image: rotation, mirror, scale, position, background (gradient or layout) and clutter
shapes, an occluding bar (20 %), lighting gain/ramp/offset, sensor noise, JPEG compression.

Targets, drawn by the same machinery (render.py):
  - VOC2007: 1-5 objects per scene; a PASCAL category borrows the traits of a random ILSVRC class
    below its synset (a "dog" looks like some ILSVRC dog breed), or of its own synset when none is
    below it (cow: shape, palette and part layout from its deepest ancestor with ILSVRC classes,
    "placental", details its own); persons are figures in random poses.
    `difficult` = box side < max(4 px, 8 % of the image height) or > 50 % covered by a later object;
    objects mostly outside the frame are not annotated; `truncated` = box cut by the border.
  - VOC2012 action: 1-2 persons; the action shows only in the pose (joint angles, lift, lean) and the
    objects placed relative to the joints: phone at the hand, camera at the face, book, instrument,
    computer on a table, bicycle or horse under the hips (ILSVRC classes drawn by their traits).
  - SUN397: scene classes carry real SUN397 names; each is defined by three object groups (top-down
    127-class labels of the world's own classes: the kinds of objects pre-training teaches); 85 % of
    a scene's 2-4 objects come from its groups (any ILSVRC class of the group, mostly ones the
    pre-training set does not hold), the rest from other scenes' groups. Two scenes share at most one
    group, and background layouts are drawn from one pool shared by all scenes, so a scene is
    recognised by which kinds of objects co-occur, not by its layout or by one object. Objects are as
    large relative to the scene's height as ImageNet objects are in theirs, so they stay recognisable
    when the whole scene is resized to a backbone's input. Default world: 100 images per scene, i.e.
    50 train + 50 test per partition as in real SUN397. (Names are labels only: a "kitchen" may hold
    snakes.)

What it is not: a stand-in for ImageNet's numbers. It makes the paper's questions answerable in
minutes (coarse vs fine labels, related vs unrelated classes, more classes vs more images), with the
same readers and commands as real data.
"""

from imagenet_transfer.synthetic.plan import SIZES, WorldSize
from imagenet_transfer.synthetic.world import (
    PARTS,
    default_world_dir,
    generate,
    present_parts,
    read_world,
    verify_world,
)

__all__ = [
    "PARTS",
    "SIZES",
    "WorldSize",
    "default_source",
    "default_world_dir",
    "generate",
    "present_parts",
    "read_world",
    "run_synth",
    "verify_world",
]


def default_source() -> str:
    """The default world's pre-training source (`imagenet/`), generated on first use (about 1 min on 2 cores;
    only that part: the transfer parts are added when a benchmark first needs them)."""
    return str(generate(parts=("imagenet",)) / "imagenet")


def run_synth(
    out=None, *, seed: int = 0, size: str = "default", resolution: int | None = None, partitions: int | None = None
):
    """`generate` the whole world as an MLflow run (stage=synth): the options as params, the folder and content
    digest as tags, the counts as metrics and world.json as an artifact. Returns the world's root."""
    import mlflow

    from imagenet_transfer import tracking
    from imagenet_transfer.synthetic.plan import check_options

    check_options(size, resolution, partitions, seed)  # bad options fail before the run starts
    params = {"size": size, "seed": seed, "resolution": resolution, "partitions": partitions, "out": out or ""}
    with tracking.start_run("synth", params=params, run_name=f"synth {size} seed {seed}"):
        root = generate(out, seed=seed, size=size, resolution=resolution, partitions=partitions)
        world = read_world(root)
        tracking.log_params({"out": str(root), **world["options"]}, prefix="resolved.")
        mlflow.set_tags(
            {"world": str(root), "content_sha256": world["content_sha256"], "generator_version": str(world["version"])}
        )
        mlflow.log_metrics({k: float(v) for k, v in world.get("counts", {}).items() if isinstance(v, (int, float))})
        mlflow.log_artifact(str(root / "world.json"))
    return root
