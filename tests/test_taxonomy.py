import collections
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli, realdata

from imagenet_transfer.errors import UserError
from imagenet_transfer.taxonomy import PASCAL_SYNSETS, load_taxonomy

BOTTOM_UP = [999, 977, 918, 877, 820, 753, 694, 596, 486, 345, 206, 79, 36, 17, 9, 5, 2, 1]
TOP_DOWN = [127, 10, 2]


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


def test_classes_are_the_1000_ilsvrc_wnids_in_label_order(tax):
    assert len(tax.classes) == 1000 and tax.classes == sorted(tax.classes)
    assert tax.classes[0] == "n01440764" and tax.name("n01440764") == "tench"
    assert tax.classes[-1] == "n15075141"


def test_parent_is_the_first_hypernym_in_nltk_name_order(tax):
    # dog.n.01 has hypernyms canine.n.02 and domestic_animal.n.01; person.n.01 causal_agent and organism
    assert tax.parent("n02084071") == "n02083346"
    assert tax.parent("n00007846") == "n00007347"
    assert tax.depth("n00001740") == 0 and tax.parent("n00001740") is None
    assert tax.path("n02085620")[-1] == "n00001740"


def test_label_set_counts_match_the_paper_exactly(tax):
    assert tax.levels("bottom-up") == BOTTOM_UP
    assert tax.levels("top-down") == TOP_DOWN


def test_hand_checkable_memberships(tax):
    coarse = tax.labels("top-down", 127)
    sizes = collections.Counter(coarse.values())
    assert sizes["n01861778"] == 218  # mammal covers 218 of the 1000 classes
    assert coarse["n02085620"] == "n01861778"  # Chihuahua -> mammal
    assert coarse["n01440764"] == coarse["n01443537"]  # tench and goldfish share a label
    nine = collections.Counter(tax.labels("bottom-up", 9).values())
    assert nine.most_common(1)[0][1] >= 940  # the 9-set is ~95 % one class, not rebalanced
    assert tax.labels("bottom-up", 1) == dict.fromkeys(tax.classes, "n00001740")


def test_unknown_levels_and_methods_list_the_valid_ones(tax):
    with pytest.raises(UserError, match="available: 999, 977"):
        tax.labels("bottom-up", 500)
    with pytest.raises(UserError, match="bottom-up, top-down"):
        tax.levels("sideways")


def test_pascal_removed_keeps_771_with_the_published_per_class_counts(tax):
    overlap = {k: len(v) for k, v in tax.pascal_overlap().items()}
    assert set(overlap) == set(PASCAL_SYNSETS)
    assert (overlap["dog"], overlap["bird"], overlap["car"], overlap["bottle"], overlap["cat"]) == (118, 59, 10, 7, 7)
    assert (overlap["boat"], overlap["chair"], overlap["bus"], overlap["person"], overlap["cow"]) == (6, 4, 3, 3, 0)
    assert len(tax.pascal_removed()) == 771
    assert "n02085620" not in tax.pascal_removed() and "n01440764" in tax.pascal_removed()


def test_random_classes_and_halves_are_deterministic_for_a_seed(tax):
    assert tax.random_classes(tax.classes, 100, 3) == tax.random_classes(tax.classes, 100, 3)
    assert tax.random_classes(tax.classes, 100, 3) != tax.random_classes(tax.classes, 100, 4)
    a, b = tax.split(tax.classes, "random", 7)
    assert (len(a), len(b)) == (500, 500) and not set(a) & set(b)
    assert tax.split(tax.classes, "random", 7) == (a, b) and tax.split(tax.classes, "random", 8) != (a, b)
    with pytest.raises(UserError, match="cannot choose 1001"):
        tax.random_classes(tax.classes, 1001, 0)


def _shared_ancestors(tax, a, b):
    return {x for w in a for x in tax.path(w)} & {x for w in b for x in tax.path(w)}


def test_minimal_split_shares_far_less_of_the_tree_than_a_random_one(tax):
    a, b = tax.split(tax.classes, "minimal")
    assert (len(a), len(b)) == (500, 500) and set(a) | set(b) == set(tax.classes)
    minimal = _shared_ancestors(tax, a, b)
    random_ = _shared_ancestors(tax, *tax.split(tax.classes, "random", 0))
    assert len(minimal) <= 10 < 100 < len(random_)
    assert "n01861778" not in minimal  # no mammal on both sides
    few = tax.classes[:37]
    a, b = tax.split(few, "minimal")
    assert (len(a), len(b)) == (18, 19) and set(a) | set(b) == set(few)


def test_cli_prints_label_sets(capsys):
    assert cli("taxonomy", "labels", "--method", "top-down", "--classes", "127") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1000 and lines == sorted(lines)
    fine, label, name = lines[0].split("\t")
    assert (fine, name) == ("n01440764", load_taxonomy().name(label))
    assert cli("taxonomy", "levels", "--method", "top-down") == 0
    assert capsys.readouterr().out.split() == ["127", "10", "2"]
    assert cli("taxonomy", "pascal-removed") == 0
    kept = capsys.readouterr().out.split()
    assert len(kept) == 771 and kept == sorted(kept)


def test_cli_bad_input_exits_2(capsys):
    assert cli("taxonomy", "labels", "--method", "bottom-up", "--classes", "12") == 2
    assert "no bottom-up label set has 12 classes" in capsys.readouterr().err


def test_committed_table_matches_the_generator(tmp_path):
    wordnet = REPO / "src/imagenet_transfer/resources/wordnet_ilsvrc.tsv"
    if not Path("/usr/share/wordnet/data.noun").exists():
        pytest.skip("WordNet 3.0 (/usr/share/wordnet) is not installed: apt-get install wordnet-base")
    words = realdata("imagenet", "meta", "synset_words.txt")
    out = tmp_path / "table.tsv"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/build_taxonomy.py"), "--synset-words", str(words), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_text() == wordnet.read_text()
