"""Generate a world on disk (all cores, deterministic), find it again, check it.

Output layout and `world.json`: see the package docstring. The world is built in a hidden sibling
folder, `world.json` is written last, and the folder is renamed into place: a folder with a valid
`world.json` holds every file it lists.

A world can be made part by part (`parts=("imagenet",)`: what pre-training reads, ~80 % of the work):
`world.json` then lists only the parts present, and a later call that needs more builds the missing parts
in a hidden folder, moves them in and rewrites `world.json`. Every image draws from its own seed, so a world
completed part by part is byte-identical to one made at once (same files, same `world.json`). One process at
a time builds a given world (a lock file in the cache's `locks/` folder); another waits and then finds it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir, cache_lock
from imagenet_transfer.synthetic import render
from imagenet_transfer.synthetic.plan import (
    ACTION_PROPS,
    ACTIONS,
    SIZES,
    TABLE,
    VOC_CLASSES,
    check_options,
    choose_classes,
    scene_recipes,
    voc_pools,
)
from imagenet_transfer.synthetic.traits import traits_for
from imagenet_transfer.taxonomy import load_taxonomy

GENERATOR = "imagenet_transfer.synthetic"
VERSION = 2  # 2: SUN397 scenes of the pre-training groups, 2-4 large objects, 100 images per scene
# Top-level folders of a world; each gets a file count, byte count and digest in world.json.
GROUPS = ("imagenet", "VOCdevkit/VOC2007", "VOCdevkit/VOC2012", "SUN397", "Partitions")
PARTS = {
    "imagenet": "imagenet",
    "voc2007": "VOCdevkit/VOC2007",
    "voc2012": "VOCdevkit/VOC2012",
    "sun397": {"images": "SUN397", "partitions": "Partitions"},
}
PART_GROUPS = {part: (f,) if isinstance(f, str) else tuple(f.values()) for part, f in PARTS.items()}  # part -> GROUPS
PART_CODES = {"imagenet": 1, "voc07": 2, "voc12": 3, "sun": 4}
TASK_PART = {"imagenet": "imagenet", "voc07": "voc2007", "voc12": "voc2012", "sun": "sun397"}


# -- public API --------------------------------------------------------------------------------------
def default_world_dir(
    *, seed: int = 0, size: str = "default", resolution: int | None = None, partitions: int | None = None
) -> Path:
    """`cache_dir()/worlds/<name>`, the name made of the generator version and the options."""
    preset, options = check_options(size, resolution, partitions, seed)
    name = f"v{VERSION}-{size}-r{options['resolution']}-s{seed}"
    if options["partitions"] != preset.partitions:
        name += f"-p{options['partitions']}"
    return cache_dir() / "worlds" / name


def generate(
    out: str | Path | None = None,
    *,
    seed: int = 0,
    size: str = "default",
    resolution: int | None = None,
    partitions: int | None = None,
    progress: bool = True,
    parts: Iterable[str] | None = None,
) -> Path:
    """Generate (or find) the world for these options; return its root folder.

    `out=None` uses `default_world_dir(...)`, where a corrupted world is regenerated; an explicit
    `out` must be missing, empty, or hold a world made with the same options (returned as is, completed
    with any of `parts` it lacks). `parts`: the parts needed (names of `PARTS`); None = all.
    """
    preset, options = check_options(size, resolution, partitions, seed)
    wanted = _check_parts(parts)
    in_cache = out is None
    out = (
        default_world_dir(seed=seed, size=size, resolution=resolution, partitions=partitions)
        if in_cache
        else Path(out).expanduser()
    ).absolute()
    state, world = _existing(out, options, in_cache)
    if world is not None and wanted <= present_parts(world):
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        (cache_dir() / "locks").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the world to {out}: {err.strerror or err}; expected a writable folder") from None
    with cache_lock(f"world-{hashlib.sha1(str(out).encode()).hexdigest()[:16]}"):  # another process building it: wait
        state, world = _existing(out, options, in_cache)
        have = present_parts(world) if world is not None else set()
        if wanted <= have:
            return out
        _make(out, preset, options, state, sorted(wanted - have), progress)
    return out


def present_parts(world: dict) -> set[str]:
    """The parts (names of `PARTS`) a parsed world.json lists."""
    return {part for part, groups in PART_GROUPS.items() if all(g in world["files"] for g in groups)}


def _check_parts(parts: Iterable[str] | None) -> set[str]:
    wanted = set(PART_GROUPS) if parts is None else set(parts)
    unknown = sorted(wanted - set(PART_GROUPS))
    if unknown or not wanted:
        raise UserError(f"world part(s) {', '.join(unknown) or '(none)'}; expected some of {', '.join(PART_GROUPS)}")
    return wanted


def _make(out: Path, preset, options: dict, state: str, parts: list[str], progress: bool) -> None:
    """Build `parts` in a hidden sibling folder, then install them: the whole world, or the missing parts
    of the world at `out` (state "done")."""
    started = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise UserError(f"cannot write the world to {out}: {err.strerror or err}; expected a writable folder") from None
    try:
        manifest = _build(tmp, preset, options, progress, parts)
        if state == "done":
            manifest = _add_parts(tmp, out, manifest)
        else:
            _write_json(tmp / "world.json", manifest)
            _install(tmp, out, state, options)
    except OSError as err:
        raise UserError(f"cannot write the world to {out}: {err}; expected a writable folder with free space") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "imagenet" in parts:
        from imagenet_transfer.catalog import load_catalog

        load_catalog(out / "imagenet")  # cache the catalog now; nothing is written into imagenet/ after this
    if progress:
        new = [g for p in parts for g in PART_GROUPS[p]]
        files = sum(manifest["files"][g]["count"] for g in new)
        mb = sum(manifest["files"][g]["bytes"] for g in new) / 1e6
        what = "world" if set(parts) == set(PART_GROUPS) else f"world part(s) {', '.join(parts)}"
        _say(f"{what} ready at {out}: {files} files, {mb:.1f} MB in {time.perf_counter() - started:.1f} s")


def _add_parts(tmp: Path, out: Path, built: dict) -> dict:
    """Move the parts built in `tmp` into the world at `out` and rewrite its world.json to list them too."""
    world = read_world(out)
    for group in built["files"]:
        target = out / group
        shutil.rmtree(target, ignore_errors=True)  # the leftover of an interrupted earlier addition, not listed
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp / group, target)
    files = {**world["files"], **built["files"]}
    manifest = {
        **world,
        "counts": {**world["counts"], **built["counts"]},
        "files": files,
        "content_sha256": _combine(files),
    }
    _write_json(out / "world.json", manifest)
    return manifest


def read_world(root: str | Path) -> dict:
    """The parsed `world.json` of `root`, after cheap checks (format, version, file counts)."""
    root = Path(root)
    path = root / "world.json"
    hint = "regenerate it with `imagenet-transfer synth` (delete the folder first)"
    if not path.is_file():
        raise UserError(f"{root} holds no world.json; expected a world made by `imagenet-transfer synth`")
    try:
        world = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is corrupt ({err}); {hint}") from None
    required = ("generator", "version", "options", "classes", "parts", "files", "content_sha256")
    if not isinstance(world, dict) or any(k not in world for k in required) or world["generator"] != GENERATOR:
        raise UserError(f"{path} is incomplete or not a synthetic world manifest; {hint}")
    if world["version"] != VERSION:
        raise UserError(f"{path} was made by generator version {world['version']}, this is version {VERSION}; {hint}")
    files = world["files"]
    if (
        not isinstance(files, dict)
        or not files
        or not set(files) <= set(GROUPS)
        or _combine(files) != world["content_sha256"]
    ):
        raise UserError(f"{path} has an inconsistent file table; {hint}")
    for group in files:
        on_disk = sum(len(names) for _, _, names in os.walk(root / group))
        if on_disk != files[group]["count"]:
            raise UserError(
                f"{root / group} holds {on_disk} files, world.json lists {files[group]['count']}: "
                f"the world is incomplete or was modified; {hint}"
            )
    return world


def verify_world(root: str | Path) -> dict:
    """`read_world`, then re-hash every file against the digests in world.json (slow: reads everything)."""
    root = Path(root)
    world = read_world(root)
    for group in world["files"]:
        records = []
        for folder, _, names in os.walk(root / group):
            for name in names:
                data = (Path(folder) / name).read_bytes()
                records.append(
                    (str((Path(folder) / name).relative_to(root)), hashlib.sha1(data).hexdigest(), len(data))
                )
        if _digest(records)["sha256"] != world["files"][group]["sha256"]:
            raise UserError(
                f"{root / group}: file contents differ from world.json; the world was modified or corrupted"
            )
    return world


# -- building ------------------------------------------------------------------------------------------
def _existing(out: Path, options: dict, in_cache: bool) -> tuple[str, dict | None]:
    """('missing' | 'empty' | 'stale' (cache to replace), None) or ('done', its world.json: a matching world,
    maybe with some parts only); else UserError."""
    if not out.exists():
        return "missing", None
    if not out.is_dir():
        raise UserError(f"output {out} is a file; expected a folder (missing, empty, or a world made by synth)")
    if not any(out.iterdir()):
        return "empty", None
    if not (out / "world.json").exists() and not in_cache:
        raise UserError(
            f"output {out} is not empty and holds no world.json; expected a missing or empty folder, "
            "or a world made by `imagenet-transfer synth`"
        )
    try:
        world = read_world(out)
    except UserError:
        if in_cache:
            return "stale", None
        raise
    if json.loads(json.dumps(options)) != world["options"]:
        raise UserError(
            f"output {out} holds a world made with other options ({_brief(world['options'])}); "
            f"expected {_brief(options)}: choose another --out or delete it"
        )
    return "done", world


def _brief(options: dict) -> str:
    return ", ".join(f"{k}={options.get(k)}" for k in ("size", "seed", "resolution", "partitions"))


def _install(tmp: Path, out: Path, state: str, options: dict) -> None:
    if state == "empty":
        out.rmdir()
    if state == "stale":
        trash = out.parent / f".{out.name}.stale-{os.getpid()}"
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, out)
    except OSError:
        if _existing(out, options, False)[0] != "done":  # another process finished the same world first
            raise


def _build(tmp: Path, preset, options: dict, progress: bool, parts: list[str]) -> dict:
    tax = load_taxonomy()
    seed, res = options["seed"], options["resolution"]
    classes = choose_classes(tax, preset, seed)
    pools = voc_pools(tax)
    scenes = scene_recipes(tax, preset.scenes, seed, classes)
    needed = set(classes) | {w for ws in pools.values() for w in ws} | {w for ws in ACTION_PROPS.values() for w in ws}
    needed |= {TABLE} | {w for s in scenes for ms in s["members"] for w in ms}
    world = render.World(seed, res, traits_for(sorted(needed), seed), classes, pools, scenes)

    voc_ids = list(range(1, preset.voc_images + 1))
    act_ids = list(range(1, preset.action_images + 1))
    folders = {
        "voc2007": (
            "VOCdevkit/VOC2007/JPEGImages",
            "VOCdevkit/VOC2007/Annotations",
            "VOCdevkit/VOC2007/ImageSets/Main",
        ),
        "voc2012": (
            "VOCdevkit/VOC2012/JPEGImages",
            "VOCdevkit/VOC2012/Annotations",
            "VOCdevkit/VOC2012/ImageSets/Action",
        ),
        "sun397": ("Partitions", *(f"SUN397/{s['name'].lstrip('/')}" for s in scenes)),
        "imagenet": tuple(f"imagenet/{split}/{w}" for split in ("train", "val") for w in classes),
    }
    for part in parts:
        for folder in folders[part]:
            (tmp / folder).mkdir(parents=True)

    chunk = max(16, min(256, preset.train // 2))
    tasks = []
    for w in classes:
        for split, first, count in (("train", 1, preset.train), ("val", preset.train + 1, preset.val)):
            tasks += [
                ("imagenet", w, split, a, min(a + chunk, first + count)) for a in range(first, first + count, chunk)
            ]
    step = 32
    tasks += [("voc07", None, None, a, min(a + step, len(voc_ids) + 1)) for a in range(1, len(voc_ids) + 1, step)]
    tasks += [("voc12", None, None, a, min(a + step, len(act_ids) + 1)) for a in range(1, len(act_ids) + 1, step)]
    tasks += [("sun", i, None, 0, preset.scene_images) for i in range(len(scenes))]
    tasks = [t for t in tasks if TASK_PART[t[0]] in parts]
    total = sum(t[4] - t[3] for t in tasks)

    records, annotations, sun_names = [], {"voc07": {}, "voc12": {}}, {}
    done, started, shown = 0, time.perf_counter(), 0.0
    for task, recs, meta in _run_all(world, tmp, tasks):
        records += recs
        if task[0] in annotations:
            annotations[task[0]].update(meta)
        elif task[0] == "sun":
            sun_names[task[1]] = meta
        done += task[4] - task[3]
        if progress and (done / total >= shown + 0.1 or done == total):
            shown = done / total
            _say(f"synth: {done}/{total} images ({time.perf_counter() - started:.1f} s)")

    write = _Writer(tmp, records)
    counts = {}
    if "imagenet" in parts:
        counts["imagenet"] = {
            "classes": len(classes),
            "train": len(classes) * preset.train,
            "val": len(classes) * preset.val,
        }
    if "voc2007" in parts:
        counts["voc2007"] = _write_voc07(write, annotations["voc07"], voc_ids, seed)
    if "voc2012" in parts:
        counts["voc2012"] = _write_voc12(write, annotations["voc12"], act_ids, seed)
    if "sun397" in parts:
        counts["sun397"] = _write_partitions(write, scenes, sun_names, options["partitions"], seed)
    groups = [g for part in parts for g in PART_GROUPS[part]]
    files = {g: _digest([r for r in write.records if r[0].startswith(g + "/")]) for g in GROUPS if g in groups}
    label = tax.labels("top-down", 127)
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "size": options["size"],
        "options": options,
        "parts": PARTS,
        "classes": classes,
        "class_names": {w: tax.name(w) for w in classes},
        "coarse_groups": {w: label[w] for w in classes},
        "pascal_overlap": {c: [w for w in ws if w in set(classes)] for c, ws in tax.pascal_overlap().items()},
        "voc_classes": list(VOC_CLASSES),
        "voc_sources": pools,
        "actions": list(ACTIONS),
        "scenes": [
            {"name": s["name"], "groups": s["groups"], "group_names": [tax.name(g) for g in s["groups"]]}
            for s in scenes
        ],
        "counts": counts,
        "files": files,
        "content_sha256": _combine(files),
    }


def _run_all(world, root: Path, tasks: list):
    """Run tasks on all cores (results arrive in any order; every image's seed is its own)."""
    procs = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, len(tasks))
    if procs <= 1:
        _init(world, root)
        yield from map(_task, tasks)
        return
    # not fork: a fork of a process with live threads (torch's, a claim's heartbeat, the allocator's) can copy a
    # held lock into the child, which then waits on it forever. A forkserver is one clean process, started once.
    if "forkserver" in mp.get_all_start_methods():
        context = mp.get_context("forkserver")
        context.set_forkserver_preload([__name__])
    else:
        context = mp.get_context("spawn")
    with context.Pool(procs, initializer=_init, initargs=(world, root)) as pool:
        yield from pool.imap_unordered(_task, tasks)


_WORLD: render.World | None = None
_ROOT: Path | None = None


def _init(world, root) -> None:
    global _WORLD, _ROOT
    _WORLD, _ROOT = world, Path(root)


def _save(rel: str, data: bytes) -> tuple[str, str, int]:
    with open(_ROOT / rel, "wb") as f:
        f.write(data)
    return rel, hashlib.sha1(data).hexdigest(), len(data)


def _task(task):
    kind, a, b, start, stop = task
    world, seed = _WORLD, _WORLD.seed
    code = PART_CODES[kind]
    recs, meta = [], {}
    persons = world.voc_pools["person"]
    for i in range(start, stop):
        if kind == "imagenet":
            rng = np.random.default_rng([seed, code, int(a[1:]), 0 if b == "train" else 1, i])
            recs.append(_save(f"imagenet/{b}/{a}/{a}_{i}.JPEG", render.imagenet_image(world, a, rng)))
        elif kind == "voc07":
            name = f"{i:06d}"
            data, objects = render.voc_image(world, np.random.default_rng([seed, code, i]))
            recs.append(_save(f"VOCdevkit/VOC2007/JPEGImages/{name}.jpg", data))
            recs.append(
                _save(f"VOCdevkit/VOC2007/Annotations/{name}.xml", _xml("VOC2007", name, world.scene_size, objects))
            )
            meta[name] = [(o.name, o.difficult) for o in objects]
        elif kind == "voc12":
            name = f"2012_{i:06d}"
            data, objects = render.action_image(world, np.random.default_rng([seed, code, i]), persons)
            recs.append(_save(f"VOCdevkit/VOC2012/JPEGImages/{name}.jpg", data))
            recs.append(
                _save(f"VOCdevkit/VOC2012/Annotations/{name}.xml", _xml("VOC2012", name, world.scene_size, objects))
            )
            meta[name] = [o.actions for o in objects]
        else:
            rng = np.random.default_rng([seed, code, a, i])
            scene = world.scenes[a]["name"]
            name = "sun_" + "".join(chr(97 + int(c)) for c in rng.integers(0, 26, 16))
            recs.append(_save(f"SUN397{scene}/{name}.jpg", render.sun_image(world, a, rng)))
            meta.setdefault("names", []).append(f"{scene}/{name}.jpg")
    return task, recs, meta.get("names", meta)


def _xml(folder: str, name: str, size: tuple[int, int], objects: list) -> bytes:
    w, h = size
    lines = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{name}.jpg</filename>",
        "\t<source>",
        "\t\t<database>imagenet-transfer synthetic world</database>",
        f"\t\t<annotation>PASCAL {folder}</annotation>",
        "\t\t<image>synthetic</image>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{w}</width>",
        f"\t\t<height>{h}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for o in objects:
        lines += [
            "\t<object>",
            f"\t\t<name>{o.name}</name>",
            f"\t\t<pose>{o.pose}</pose>",
            f"\t\t<truncated>{o.truncated}</truncated>",
            f"\t\t<difficult>{o.difficult}</difficult>",
        ]
        if o.actions is not None:
            lines += ["\t\t<actions>"] + [f"\t\t\t<{k}>{v}</{k}>" for k, v in o.actions.items()] + ["\t\t</actions>"]
        lines += ["\t\t<bndbox>"] + [f"\t\t\t<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), o.box)]
        lines += ["\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>\n")
    return "\n".join(lines).encode()


# -- lists -----------------------------------------------------------------------------------------------
class _Writer:
    """Writes the small text files and keeps (path, sha1, bytes) records of everything."""

    def __init__(self, root: Path, records: list):
        self.root, self.records = root, records

    def __call__(self, rel: str, lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode()
        (self.root / rel).write_bytes(data)
        self.records.append((rel, hashlib.sha1(data).hexdigest(), len(data)))


def _halves(ids: list[str], key: str, seed: int) -> tuple[list[str], list[str]]:
    order = np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)]).permutation(len(ids))
    cut = len(ids) // 2
    return sorted(ids[i] for i in order[:cut]), sorted(ids[i] for i in order[cut:])


def _write_voc07(write: _Writer, objects: dict, ids: list[int], seed: int) -> dict:
    names = [f"{i:06d}" for i in ids]
    trainval, test = _halves(names, "voc07/test", seed)
    train, val = _halves(trainval, "voc07/val", seed)
    sets = {"train": train, "val": val, "trainval": trainval, "test": test}
    base = "VOCdevkit/VOC2007/ImageSets/Main"
    for s, members in sets.items():
        write(f"{base}/{s}.txt", members)
        for cls in VOC_CLASSES:
            flags = []
            for n in members:
                mine = [difficult for name, difficult in objects[n] if name == cls]
                flags.append(f"{n} {(1 if not all(mine) else 0) if mine else -1:2d}")
            write(f"{base}/{cls}_{s}.txt", flags)
    return {
        "trainval": len(trainval),
        "test": len(test),
        "objects": sum(len(v) for v in objects.values()),
        "difficult": sum(d for v in objects.values() for _, d in v),
    }


def _write_voc12(write: _Writer, actions: dict, ids: list[int], seed: int) -> dict:
    names = [f"2012_{i:06d}" for i in ids if actions[f"2012_{i:06d}"]]
    train, val = _halves(names, "voc12/val", seed)
    base = "VOCdevkit/VOC2012/ImageSets/Action"
    for s, members in {"train": train, "val": val, "trainval": sorted(train + val)}.items():
        write(f"{base}/{s}.txt", members)
        for act in ACTIONS:
            write(
                f"{base}/{act}_{s}.txt",
                [f"{n} {j} {1 if a[act] else -1:2d}" for n in members for j, a in enumerate(actions[n], 1)],
            )
    return {"train": len(train), "val": len(val), "persons": sum(len(actions[n]) for n in names)}


def _write_partitions(write: _Writer, scenes: list, names: dict, partitions: int, seed: int) -> dict:
    write("Partitions/ClassName.txt", [s["name"] for s in scenes])
    for p in range(1, partitions + 1):
        train, test = [], []
        for i, s in enumerate(scenes):
            a, b = _halves(sorted(names[i]), f"sun/{p}/{s['name']}", seed)
            train += a
            test += b
        write(f"Partitions/Training_{p:02d}.txt", train)
        write(f"Partitions/Testing_{p:02d}.txt", test)
    return {"classes": len(scenes), "images": sum(len(v) for v in names.values()), "partitions": partitions}


# -- digests ------------------------------------------------------------------------------------------------
def _digest(records: list) -> dict:
    h = hashlib.sha256()
    for rel, sha1, _ in sorted(records):
        h.update(f"{rel}\t{sha1}\n".encode())
    return {"count": len(records), "bytes": sum(r[2] for r in records), "sha256": h.hexdigest()}


def _combine(files: dict) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


__all__ = ["PARTS", "SIZES", "default_world_dir", "generate", "present_parts", "read_world", "verify_world"]
