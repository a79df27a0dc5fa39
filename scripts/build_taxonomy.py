"""Build the committed WordNet table that `imagenet_transfer.taxonomy` reads at run time.

    apt-get install --no-install-recommends wordnet-base      # WordNet 3.0 in /usr/share/wordnet
    python scripts/build_taxonomy.py \
        --synset-words ../shared/realdata/imagenet/meta/synset_words.txt \
        --out src/imagenet_transfer/resources/wordnet_ilsvrc.tsv

Input: WordNet 3.0's `data.noun` and `index.noun`, and the ILSVRC-2012 class list (`synset_words.txt`
of the devkit: `<wnid> <names>` per line, sorted by wnid). Output: one TSV row per synset that is an
ILSVRC class, a PASCAL VOC synset, or an ancestor of either (following every `@` hypernym pointer,
never `@i`), with columns

    wnid     n + the 8-digit data.noun offset
    synset   NLTK's name for it: first lemma, lower-cased, `.n.`, its sense number in index.noun
    parents  the `@` hypernyms' wnids, space-separated, sorted by NLTK synset name (NLTK's order)
    ilsvrc   the class index 0..999 (wnid order), or -1
    name     the ILSVRC name for the 1000 classes, else the synset's lemmas

Runs in about a second; the output is deterministic, so rerunning it must leave git clean.
"""

import argparse
from pathlib import Path

PASCAL_WNIDS = [
    "n02691156",
    "n02834778",
    "n01503061",
    "n02858304",
    "n02876657",
    "n02924116",
    "n02958343",
    "n02121620",
    "n03001627",
    "n01887787",
    "n03201208",
    "n02084071",
    "n02374451",
    "n03769722",
    "n00007846",
    "n00017222",
    "n02411705",
    "n04256520",
    "n04468005",
    "n03782006",
]


def read_index(index_path: Path) -> dict[str, list[str]]:
    """lemma -> the synset offsets listed for it in index.noun, in sense order."""
    senses = {}
    for line in index_path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split()
        lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
        offsets_start = 4 + p_cnt + 2
        senses[lemma] = fields[offsets_start : offsets_start + synset_cnt]
    return senses


def read_data(data_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemmas, hypernym offsets) for every noun synset in data.noun."""
    synsets = {}
    for line in data_path.read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split(" | ")[0].split()
        offset, w_cnt = fields[0], int(fields[3], 16)
        lemmas = fields[4 : 4 + 2 * w_cnt : 2]
        p_at = 4 + 2 * w_cnt
        p_cnt = int(fields[p_at])
        pointers = [fields[p_at + 1 + 4 * i : p_at + 5 + 4 * i] for i in range(p_cnt)]
        hypernyms = [target for symbol, target, pos, _ in pointers if symbol == "@" and pos == "n"]
        synsets[offset] = (lemmas, hypernyms)
    return synsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--synset-words", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("src/imagenet_transfer/resources/wordnet_ilsvrc.tsv"))
    args = parser.parse_args()

    senses = read_index(args.wordnet / "index.noun")
    synsets = read_data(args.wordnet / "data.noun")

    def nltk_name(offset: str) -> str:
        lemma = synsets[offset][0][0].lower()
        return f"{lemma}.n.{senses[lemma].index(offset) + 1:02d}"

    ilsvrc = {}
    for line in args.synset_words.read_text().splitlines():
        if line.strip():
            wnid, name = line.split(" ", 1)
            ilsvrc[wnid] = name.split(",")[0].strip()
    if len(ilsvrc) != 1000:
        raise SystemExit(f"{args.synset_words}: expected 1000 ILSVRC classes, found {len(ilsvrc)}")
    class_index = {wnid: i for i, wnid in enumerate(sorted(ilsvrc))}

    keep, todo = set(), [w[1:] for w in list(ilsvrc) + PASCAL_WNIDS]
    while todo:
        offset = todo.pop()
        if offset not in keep:
            keep.add(offset)
            todo.extend(synsets[offset][1])

    rows = ["wnid\tsynset\tparents\tilsvrc\tname"]
    for offset in sorted(keep):
        wnid = "n" + offset
        parents = " ".join("n" + p for p in sorted(synsets[offset][1], key=nltk_name))
        name = ilsvrc.get(wnid) or ", ".join(lemma.replace("_", " ") for lemma in synsets[offset][0])
        rows.append(f"{wnid}\t{nltk_name(offset)}\t{parents}\t{class_index.get(wnid, -1)}\t{name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} synsets to {args.out}")


if __name__ == "__main__":
    main()
