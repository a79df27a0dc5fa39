import pandas as pd
import pydantic
import pytest

from imagenet_transfer.catalog import demo_catalog
from imagenet_transfer.errors import UserError
from imagenet_transfer.subsets import PAPER_PRESETS, SubsetSpec, build_subset, load_spec, preset, write_subset
from imagenet_transfer.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def catalog():
    return demo_catalog()


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


def train_counts(subset):
    return subset.manifest[subset.manifest["split"] == "train"].groupby("wnid").size()


def test_full_keeps_everything_with_fine_labels(catalog):
    s = build_subset(catalog, preset("full"))
    assert len(s.manifest) == len(catalog) and len(s.classes) == 1000
    assert (s.manifest["wnid"] == s.manifest["label_wnid"]).all()
    assert s.manifest["label"].between(0, 999).all() and s.classes["label_wnid"].is_monotonic_increasing


def test_e1_takes_n_train_images_per_class_and_all_val(catalog):
    s = build_subset(catalog, preset("e1-40"))
    assert (train_counts(s) == 40).all() and len(train_counts(s)) == 1000
    assert (s.manifest["split"] == "val").sum() == 3000
    assert set(s.manifest["path"]) <= set(catalog["path"])


def test_selection_is_deterministic_seeded_and_independent_of_row_order(catalog):
    spec = preset("e1-40")
    a = build_subset(catalog, spec)
    assert build_subset(catalog.sample(frac=1, random_state=3), spec).manifest.equals(a.manifest)
    b = build_subset(catalog, spec.with_seed(1))
    assert a.digest != b.digest and len(a.manifest) == len(b.manifest)
    # digests are pinned: they must not drift between runs, machines or releases
    assert spec.digest == "9181d803eb193ffc"
    assert a.digest == "6bd86520bee1d228"
    moved = catalog.assign(path=catalog["path"].map(lambda p: "/mnt/elsewhere/" + p))
    assert build_subset(moved.drop(columns="name_hash"), spec).digest == a.digest


@pytest.mark.parametrize("method, k", [("bottom-up", 486), ("bottom-up", 9), ("top-down", 127), ("top-down", 10)])
def test_e2_e3_relabel_every_image_by_the_wordnet_level(catalog, tax, method, k):
    s = build_subset(catalog, SubsetSpec(name="x", labels=method, label_classes=k))
    expected = tax.labels(method, k)
    assert (s.manifest["label_wnid"] == s.manifest["wnid"].map(expected)).all()
    assert len(s.classes) == k and len(s.manifest) == len(catalog)
    assert s.classes["fine_classes"].sum() == 1000
    if (method, k) == ("top-down", 127):
        assert s.classes.set_index("label_wnid").loc["n01861778", "fine_classes"] == 218


def test_e5_budget_is_spent_exactly_over_c_random_classes(catalog):
    s = build_subset(catalog, preset("e5-budget-1003-classes-100"))
    counts = train_counts(s)
    assert counts.sum() == 1003 and len(counts) == 100 and counts.max() - counts.min() <= 1
    other = build_subset(catalog, preset("e5-budget-1003-classes-100").with_seed(5))
    assert set(train_counts(other).index) != set(counts.index)


def test_e6_drops_every_class_below_a_pascal_synset(catalog, tax):
    s = build_subset(catalog, preset("e6-pascal-removed"))
    removed = {w for ws in tax.pascal_overlap().values() for w in ws}
    assert len(s.classes) == 771 and not removed & set(s.manifest["wnid"])


@pytest.mark.parametrize("split", ["random", "minimal"])
def test_e7_halves_partition_the_classes(catalog, split):
    a, b, ab = (build_subset(catalog, preset(f"e7-{split}-{h}")) for h in ("a", "b", "ab"))
    wa, wb = set(a.manifest["wnid"]), set(b.manifest["wnid"])
    assert not wa & wb and len(wa) == len(wb) == 500 and wa | wb == set(ab.manifest["wnid"])
    assert ab.digest == build_subset(catalog, preset("full")).digest


def test_subsets_of_a_smaller_source_use_its_classes(catalog, tax):
    few = catalog[catalog["wnid"].isin(tax.classes[::25])]  # 40 classes
    a = build_subset(few, preset("e7-minimal-a"))
    assert len(a.classes) == 20
    assert len(build_subset(few, preset("e3-10")).classes) < 10


@pytest.mark.parametrize("name", [*PAPER_PRESETS, "e5-budget-5000-classes-100", "e2-17"])
def test_every_preset_round_trips_through_yaml(name):
    spec = preset(name)
    again = SubsetSpec.from_yaml(spec.to_yaml())
    assert again == spec and again.digest == spec.digest


def test_spec_file(tmp_path):
    (tmp_path / "s.yaml").write_text("name: mine\nclasses: random\nnum_classes: 50\nimages_per_class: 20\nseed: 2\n")
    spec = load_spec(spec_file=tmp_path / "s.yaml")
    assert (spec.num_classes, spec.images_per_class, spec.seed) == (50, 20, 2)


@pytest.mark.parametrize(
    "spec, message",
    [
        (lambda: preset("e4-127"), "unknown preset 'e4-127'; valid presets: full"),
        (lambda: preset("e2-500"), "available: 999, 977"),
        (lambda: SubsetSpec(budget=100, images_per_class=5, classes="random", num_classes=10), "contradict"),
        (lambda: SubsetSpec(classes="random"), "num_classes goes with classes: random"),
        (lambda: SubsetSpec(classes="half", split="random"), r"half \(one of a, b, ab\)"),
        (
            lambda: SubsetSpec(classes="halves"),
            "classes = 'halves': expected 'all', 'pascal-removed', 'random' or 'half'",
        ),
        (lambda: SubsetSpec(images_per_class=0), "images_per_class = 0: expected greater than or equal to 1"),
        (lambda: SubsetSpec(seed="1"), "seed = '1': expected a valid integer"),
        (lambda: SubsetSpec(num_classes=True, classes="random"), "num_classes = True: expected a valid integer"),
        (lambda: SubsetSpec(labels="top-down"), "label_classes"),
        (lambda: SubsetSpec.from_yaml("classes: all\nimages: 5\n"), r"unknown key 'images' \(valid: name, classes"),
        (lambda: SubsetSpec.from_yaml("- 1\n"), "expected a mapping"),
        (lambda: load_spec(), "exactly one of --preset"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(UserError, match=message):
        spec()


def test_e5_at_ilsvrc_scale_draws_its_classes_among_those_with_b_over_c_images():
    """ILSVRC-2012 has classes of 732 images: a budget of 1000 a class is drawn among the classes that have 1000."""
    from imagenet_transfer.catalog import ILSVRC_TRAIN_IMAGES, ilsvrc_shaped_catalog

    catalog = ilsvrc_shaped_catalog()
    sizes = catalog[catalog["split"] == "train"].groupby("wnid", observed=True).size()
    assert sizes.sum() == ILSVRC_TRAIN_IMAGES and (sizes.min(), sizes.max()) == (732, 1300)
    for classes in (128, 250, 500, 1000):
        counts = train_counts(build_subset(catalog, preset(f"e5-budget-128000-classes-{classes}")))
        assert counts.sum() == 128_000 and len(counts) == classes and set(counts) == {128_000 // classes}
        assert (sizes[counts.index] >= 128_000 // classes).all()
    small = sizes[sizes < 1000].index  # the 115 classes that could not give 1000 images are never drawn
    assert not set(small) & set(train_counts(build_subset(catalog, preset("e5-budget-128000-classes-128"))).index)


@pytest.mark.parametrize(
    "name, message",
    [
        ("e1-70", r"needs more train images than \d+ class\(es\) have: n0"),
        ("e5-budget-50-classes-100", "cannot give each of 100 classes an image"),
        ("e5-budget-100000-classes-1001", "asks for 1001 classes but the catalog has 1000"),
        ("e5-budget-20000-classes-100", "needs 200 train images in each, and only 0 of the catalog's 1000"),
    ],
)
def test_impossible_requests_name_the_classes(catalog, name, message):
    with pytest.raises(UserError, match=message):
        build_subset(catalog, preset(name))


def test_unknown_wnid_in_the_catalog_is_named(catalog):
    bad = pd.concat([catalog, pd.DataFrame({"path": ["x.JPEG"], "wnid": ["n99999999"], "split": ["train"]})])
    with pytest.raises(UserError, match="unknown wnid.*n99999999"):
        build_subset(bad, preset("full"))


def test_write_is_atomic_and_refuses_foreign_folders(catalog, tmp_path, monkeypatch):
    s = build_subset(catalog, preset("e1-40"))
    out = write_subset(s, tmp_path / "sub")
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.tsv",
        "counts.tsv",
        "manifest.parquet",
        "spec.yaml",
        "subset.json",
    ]
    assert pd.read_parquet(out / "manifest.parquet").equals(s.manifest)
    write_subset(build_subset(catalog, preset("e1-45")), out)  # a subset folder is replaced whole
    assert (pd.read_parquet(out / "manifest.parquet")["split"] == "train").sum() == 45_000
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no subset"):
        write_subset(s, tmp_path / "foreign")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError):
        write_subset(s, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "sub"]


def test_spec_is_frozen():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        preset("full").seed = 3
