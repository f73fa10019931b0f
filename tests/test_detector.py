"""The "neither" detector (dogcat.detector): its maths, its file and hash ties, the ImageNet gate and its rules, on
made-up features and on real photos."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from dogcat import imagenet_groups
from dogcat.artifacts import DETECTOR_FILENAME, IMAGENET_HEAD_FILENAME, ArtifactError, file_sha256
from dogcat.detector import (
    BIG_CATS,
    COUGAR,
    LYNX,
    PETS,
    Detector,
    ImageNetHead,
    detector_for,
    fit_detector,
)
from dogcat.inference import Classifier
from dogcat.verdict import (
    CAT,
    DOG,
    NEITHER,
    UNSURE,
)
from tests.helpers import DEV_PHOTOS, EXAMPLES, REPO, SHIPPED, model_folder_copy, needs_shipped

# --- the detector -----------------------------------------------------------------------------------


BLOCKS = (("pool", 12), ("trunk", 4))


def _photos(rng, count, direction):
    """Feature rows near `direction` (an index) in both blocks, with a little noise."""
    centre = np.zeros(16, np.float32)
    centre[direction], centre[12 + direction % 4] = 1.0, 1.0
    return centre + rng.normal(0, 0.05, (count, 16)).astype(np.float32)


@pytest.fixture
def fitted():
    """Training features around two directions (cats, dogs); other directions are novel."""
    rng = np.random.default_rng(0)
    train = np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)])
    val = np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)])
    labels = np.repeat([0, 1], 100)
    return fit_detector(train, labels, val, labels, "f" * 64, BLOCKS, turn_away=0.02, unsure_share=0.1), rng


def test_the_thresholds_turn_away_the_chosen_shares_of_the_pets_out_of_fold(fitted):
    """Set on the out-of-fold distances of all 400 training and validation photos, not on 200: new
    photos like them are turned away about as often, and an in-sample threshold would turn away fewer."""
    detector, rng = fitted
    assert detector.info["out_of_fold_far"] == 0.02  # 8 of 400, the most that 2% allows
    assert detector.info["cross_fit_folds"] == 5
    assert detector.info["val_turned_away"] < 0.02  # the fitted means have seen these photos
    fresh = detector.judge(_photos(rng, 2000, 0))
    assert 0.005 < fresh.neither.mean() < 0.04  # about the out-of-fold share on new photos like them
    assert 0.05 < (fresh.neither | fresh.unsure).mean() < 0.15  # the unsure band: about 10% more
    assert detector.judge(_photos(rng, 100, 7)).neither.all()  # a direction no training photo has


def test_each_feature_block_counts(fitted):
    """A photo novel in only one block (here the trunk's) is still flagged."""
    detector, rng = fitted
    photos = _photos(rng, 50, 0)
    photos[:, 12:] = np.roll(photos[:, 12:], 2, axis=1)  # a trunk pattern neither class has
    assert detector.judge(photos).neither.mean() > 0.9


def test_detector_round_trips_and_loads_without_pickle(fitted, tmp_path):
    detector, rng = fitted
    detector.save(tmp_path / DETECTOR_FILENAME)
    loaded = Detector.load(tmp_path / DETECTOR_FILENAME, expected=BLOCKS)
    features = rng.normal(0, 1, (20, 16)).astype(np.float32)
    np.testing.assert_allclose(loaded.scores(features), detector.scores(features), rtol=1e-3, atol=1e-3)
    assert (loaded.threshold, loaded.keras_sha256) == (detector.threshold, "f" * 64)
    assert [b.name for b in loaded.blocks] == ["pool", "trunk"]


@pytest.mark.parametrize("kind", ["pickled", "text", "wrong-shape"])
def test_a_foreign_or_malicious_detector_file_is_refused_in_one_line(tmp_path, kind):
    path = tmp_path / DETECTOR_FILENAME
    if kind == "pickled":  # an object array would need pickle, which could run code
        np.savez(path, reference=np.array([object()], dtype=object), header=np.array("{}"))
    elif kind == "text":
        path.write_text("not a detector")
    else:
        header = {"format": 2, "method": "mahalanobis", "threshold": 0.5, "keras_sha256": "x",
                  "blocks": [{"name": "pool", "val_mean": 0.0, "val_std": 1.0}]}
        np.savez(path, means_0=np.ones((2, 4), np.float32), precision_0=np.ones((3, 3), np.float16),
                 precision_scale_0=np.array(1.0), header=np.array(json.dumps(header)))
    with pytest.raises(ArtifactError, match="Not a dogcat detector file") as caught:
        Detector.load(path)
    assert "\n" not in str(caught.value)


def _fake_head(pet_rows: bool) -> ImageNetHead:
    """A head on the 12-wide "pool" block: direction 7 reads as a dog breed (pet_rows) or as a tiger."""
    kernel = np.zeros((1001, 12), np.float32)
    kernel[PETS[0] if pet_rows else BIG_CATS[-2], 7] = 20.0
    return ImageNetHead(kernel, np.zeros(1001, np.float32), [f"class {i}" for i in range(1001)], "h" * 64)


@pytest.mark.parametrize("pet", [True, False])
def test_a_far_photo_is_neither_only_where_imagenet_sees_no_pet(pet):
    """Far from every training photo in both blocks: a pet by ImageNet's reading is kept, a tiger is not."""
    rng = np.random.default_rng(0)
    train, val = (np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)]) for _ in range(2))
    detector = fit_detector(train, np.repeat([0, 1], 100), val, np.repeat([0, 1], len(val) // 2), "f" * 64, BLOCKS, 0.02, 0.02, _fake_head(pet), 0.9)
    far = _photos(rng, 50, 7)
    assert (detector.scores(far) > detector.threshold).all()
    judged = detector.judge(far)
    assert judged.neither.tolist() == [not pet] * 50
    read_as = (PETS[0] if pet else BIG_CATS[-2]) - imagenet_groups.HEAD_OFFSET
    assert {seen.name for seen in judged.looks_like} == {imagenet_groups.readable_names()[read_as]}
    assert judged.looks_like[0].animal == (DOG if pet else None)
    assert detector.info["imagenet_used"] is True
    assert detector.imagenet_sha256 == "h" * 64


def _head_reading(index: int, strength: float = 20.0) -> ImageNetHead:
    """A head on the 12-wide "pool" block whose direction 7 reads as ImageNet output `index`."""
    kernel = np.zeros((1001, 12), np.float32)
    kernel[index, 7] = strength
    return ImageNetHead(kernel, np.zeros(1001, np.float32), [f"class {i}" for i in range(1001)], "h" * 64)


def _imagenet_only(head: ImageNetHead) -> tuple[Detector, np.random.Generator]:
    """A detector fitted with `head`, its distance rules switched off, so only ImageNet's reading decides."""
    rng = np.random.default_rng(0)
    train, val = (np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)]) for _ in range(2))
    labels = np.repeat([0, 1], 100)
    detector = fit_detector(train, labels, val, labels, "f" * 64, BLOCKS, 0.02, 0.02, head, 0.9)
    detector.threshold = detector.info["unsure_threshold"] = np.inf
    return detector, rng


def _near_but_read_by_imagenet(rng, count: int) -> np.ndarray:
    """Cats by their features, with enough of direction 7 for the head to read its class."""
    photos = _photos(rng, count, 0)
    photos[:, 7] += 0.5
    return photos


@pytest.mark.parametrize(("wnid", "expected"), [
    (COUGAR, "neither"),  # never a pet's reading: vetoes even a photo near the training cats
    ("n02403003", "neither"),  # ox (ungulate)
    ("n02114367", "unsure"),  # grey wolf: a husky is read as one now and then, so only "unsure"
    ("n02443484", "unsure"),  # black-footed ferret (mustelid)
    (LYNX, "unsure"),
    ("n02123045", "kept"),  # tabby: a pet's own reading
])
def test_imagenet_vetoes_by_kind_never_by_a_class_pets_are_read_as(wnid, expected):
    index = next(c.index for c in imagenet_groups.classes() if c.wnid == wnid) + imagenet_groups.HEAD_OFFSET
    detector, rng = _imagenet_only(_head_reading(index))
    judged = detector.judge(_near_but_read_by_imagenet(rng, 20))
    outcome = "neither" if judged.neither.all() else "unsure" if judged.unsure.all() else "kept"
    assert outcome == expected
    assert not (judged.neither & judged.unsure).any()
    assert detector.judge(_photos(rng, 400, 0)).neither.mean() < 0.02  # new cats: past the most of 400 now and then


def test_imagenet_thresholds_are_the_most_any_of_the_users_pets_reached():
    detector, _rng = _imagenet_only(_head_reading(0))
    info = detector.info
    assert set(info["lookalike_at"]) == {"wild canine", "small mammal", "lynx"}
    assert 0 < info["never_pet_at"] < 1
    reference = np.concatenate([_photos(np.random.default_rng(0), 100, d) for d in (0, 1)])
    assert not detector.judge(reference).neither.any()


def test_a_far_pet_is_kept_by_a_lynx_reading_but_a_near_cougar_is_not():
    """Lynx rescues (a Maine Coon is read as one) yet only doubts; a cougar is turned away near or far."""
    lynx = next(c.index for c in imagenet_groups.classes() if c.wnid == LYNX) + imagenet_groups.HEAD_OFFSET
    rng = np.random.default_rng(0)
    train, val = (np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)]) for _ in range(2))
    labels = np.repeat([0, 1], 100)
    detector = fit_detector(train, labels, val, labels, "f" * 64, BLOCKS, 0.02, 0.02, _head_reading(lynx), 0.9)
    far = _photos(rng, 30, 7)
    judged = detector.judge(far)
    assert (detector.scores(far) > detector.threshold).all()
    assert not judged.neither.any()
    assert judged.unsure.all()
    assert {seen.name for seen in judged.looks_like} == {"lynx"}


def test_looks_like_uses_everyday_names_and_keeps_the_imagenet_id():
    tabby = next(c for c in imagenet_groups.classes() if c.imagenet_name == "tiger cat")
    detector, rng = _imagenet_only(_head_reading(tabby.index + imagenet_groups.HEAD_OFFSET))
    seen = detector.judge(_near_but_read_by_imagenet(rng, 1)).looks_like[0]
    assert (seen.name, seen.animal, seen.imagenet_id, seen.group) == ("tabby cat", CAT, tabby.wnid, "house_cat")


def test_a_head_that_no_longer_reads_imagenet_is_not_used(tiny_model_dir, tmp_path):
    """Agreement with the frozen network under the minimum: distance alone, said in one warning line."""
    rng = np.random.default_rng(0)
    train, val = (np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)]) for _ in range(2))
    detector = fit_detector(train, np.repeat([0, 1], 100), val, np.repeat([0, 1], len(val) // 2), "f" * 64, BLOCKS, 0.02, 0.02, _fake_head(True), 0.3)
    assert detector.head is None
    assert detector.imagenet_sha256 is None
    assert detector.judge(_photos(rng, 50, 7)).neither.all()  # the pet reading no longer rescues anything
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    detector.keras_sha256 = file_sha256(folder / "dog_cat_classifier.keras")
    detector.save(folder / DETECTOR_FILENAME)
    found, warning = detector_for(folder / "dog_cat_classifier.keras", expected=BLOCKS)
    assert found is not None
    assert found.head is None
    assert "read ImageNet classes on only 30% of validation photos" in warning
    assert "\n" not in warning


def test_agreement_measured_on_too_few_validation_photos_does_not_vouch_for_the_head():
    """An untrained model can agree with ImageNet on 4 photos by chance: under 50 photos the head is not used."""
    rng = np.random.default_rng(0)
    train = np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)])
    val = np.concatenate([_photos(rng, 20, 0), _photos(rng, 20, 1)])
    detector = fit_detector(train, np.repeat([0, 1], 100), val, np.repeat([0, 1], len(val) // 2), "f" * 64, BLOCKS, 0.02, 0.02, _fake_head(True), 1.0)
    assert (detector.head, detector.imagenet_sha256) == (None, None)


@pytest.mark.parametrize("damage", ["nan-val-mean", "wrong-width", "inflates"])
def test_a_tampered_detector_is_refused_before_use(fitted, tmp_path, damage):
    detector, _ = fitted
    path = tmp_path / DETECTOR_FILENAME
    if damage == "nan-val-mean":  # would switch "neither" off without a word
        detector.blocks[0].val_mean = float("nan")
    detector.save(path)
    if damage == "inflates":  # a small file whose members inflate past the limit
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("padding.npy", b"\0" * (65 * 2**20))
    expected = (("pool", 12), ("trunk", 5)) if damage == "wrong-width" else BLOCKS
    with pytest.raises(ArtifactError, match=r"would inflate|Not a dogcat detector file") as caught:
        Detector.load(path, expected=expected)
    assert "\n" not in str(caught.value)


def test_a_stale_or_missing_detector_means_cat_dog_verdicts_and_a_warning(tiny_model_dir, tmp_path, fitted):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = folder / "dog_cat_classifier.keras"
    detector, _ = fitted
    assert detector_for(model)[0] is None
    assert f"no {folder / DETECTOR_FILENAME} beside the model" in detector_for(model)[1]

    detector.save(folder / DETECTOR_FILENAME)  # fitted for another .keras ("fff...")
    found, warning = detector_for(model, expected=BLOCKS)
    assert found is None
    assert warning == (f"{folder / DETECTOR_FILENAME} was fitted for a different .keras file, so no 'neither' "
                       f"verdicts (run `dogcat detector fit {model} DATA_DIR`)")
    classifier = Classifier.from_path(model)  # its runtime's features are 1,440 wide, not this file's 16
    assert classifier.detector is None
    assert classifier.verdict_warning.startswith("Not a dogcat detector file (unexpected contents)")
    assert classifier.predict([np.zeros((96, 96, 3), np.uint8)])[0].verdict in {CAT, DOG, UNSURE}


# --- the shipped model and its detector, on real photos ------------------------------------------


@needs_shipped
def test_shipped_detector_is_tied_to_the_shipped_model():
    detector, warning = detector_for(SHIPPED / "dog_cat_classifier.keras")
    assert warning is None
    assert detector.keras_sha256 == file_sha256(SHIPPED / "dog_cat_classifier.keras")


# --- the command line -------------------------------------------------------------------------------


def test_detector_fit_command_ties_a_detector_to_the_model(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    from dogcat.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = folder / "dog_cat_classifier.keras"
    assert main(["predict", "--model", str(model), str(tiny_dataset / "test")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"dogcat: warning: no {folder / DETECTOR_FILENAME} beside the model")

    assert main(["detector", "fit", str(model), str(tiny_dataset), "--turn-away", "0.2"]) == 0
    classifier = Classifier.from_path(model)
    # An untrained model's features read no ImageNet class: distance alone, and it says so.
    assert "'neither' is judged on feature distance alone" in classifier.verdict_warning
    assert classifier.detector.head is None
    assert classifier.detector.keras_sha256 == file_sha256(model)
    assert classifier.detector.info["train_photos"] == 16
    assert main(["predict", "--model", str(model), str(tiny_dataset / "test")]) == 0
    assert capsys.readouterr().err == f"dogcat: warning: {classifier.verdict_warning}\n"
    assert main(["detector", "fit", str(model), str(tiny_dataset), "--turn-away", "nan"]) == 2
    assert capsys.readouterr().err.strip().endswith("Received: turn_away=nan")


def test_evaluate_reports_turned_away_and_the_neither_folder(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    from dogcat.cli import main
    from dogcat.export import fit_detector_beside

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    fit_detector_beside(folder / "dog_cat_classifier.keras", tiny_dataset, 0.2, log=lambda _: None)
    others = tmp_path / "others" / "noise"
    others.mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(others / f"{index}.png")
    assert main(["evaluate", str(folder / "dog_cat_classifier.keras"), str(tiny_dataset),
                 "--neither", str(tmp_path / "others"), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "turned away" in out
    assert "neither folder" in out
    metrics = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert sum(metrics["verdicts"].values()) == metrics["count"] == 2
    assert metrics["neither_folder"]["count"] == 3
    assert set(metrics["neither_folder"]["categories"]) == {"noise"}
    assert metrics["detector"] is True


# --- the ImageNet gate on real photos from other domains (pets-dev, ood-dev: never shipped) ---------

RESCUED_DOG = DEV_PHOTOS / "pets-dev" / "dog" / "oxa__datasets__oxford-pets__data__sample_images__dogs__keeshond_139.jpg"
TIGER = DEV_PHOTOS / "ood-dev" / "bigcat" / "bsds__BSR__BSDS500__data__images__test__108069.jpg"
needs_dev_photos = pytest.mark.skipif(not (RESCUED_DOG.is_file() and TIGER.is_file()), reason="no pets-dev / ood-dev photos")


@needs_shipped
@needs_dev_photos
@pytest.mark.parametrize("runtime", ["onnx", "keras", "onnx-int8"])
def test_a_dog_unlike_the_training_photos_is_a_dog_and_a_tiger_is_neither(runtime):
    """The keeshond is far from every Kaggle photo (distance alone turned it away); ImageNet sees a dog breed."""
    classifier = Classifier.from_path(runtime=runtime)
    assert classifier.verdict_warning is None
    dog, tiger = classifier.predict([RESCUED_DOG, TIGER])
    assert (dog.verdict, dog.looks_like.animal) == (DOG, DOG)
    if runtime != "onnx-int8":  # int8's features put this dog just under the distance threshold
        assert classifier.detector.scores(dog.features[None])[0] > classifier.detector.info["unsure_threshold"]  # unusual, yet kept
    assert dog.sentence == f"Dog: looks like a {dog.looks_like.name} ({dog.looks_like.probability:.0%})"
    assert tiger.verdict == NEITHER
    assert (tiger.looks_like.name, tiger.looks_like.group) == ("tiger", "big_cat")
    assert tiger.sentence.startswith("Neither a cat nor a dog: looks like a tiger (")
    if runtime == "onnx-int8":  # int8's features put this dog just under the distance threshold
        return
    classifier.detector.head = None  # distance alone, the rule before the ImageNet head
    assert classifier.predict([RESCUED_DOG])[0].verdict == UNSURE


@needs_shipped
def test_a_different_imagenet_head_is_refused_by_its_hash_with_one_warning(tmp_path):
    folder, model = model_folder_copy(tmp_path)
    with np.load(folder / IMAGENET_HEAD_FILENAME, allow_pickle=False) as archive:
        arrays = dict(archive)
    arrays["bias"] = arrays["bias"] + 1  # still a valid head file, not the one the detector was fitted with
    np.savez_compressed(folder / IMAGENET_HEAD_FILENAME, **arrays)
    classifier = Classifier.from_path(model)
    assert classifier.detector is not None
    assert classifier.detector.head is None
    assert classifier.verdict_warning == (
        f"{folder / IMAGENET_HEAD_FILENAME} is not the ImageNet head the detector was fitted with, so 'neither' is "
        f"judged on feature distance alone, with no 'looks like' (run `dogcat detector fit {model} DATA_DIR`)")
    prediction = classifier.predict([EXAMPLES / "rocket.jpg"])[0]
    assert (prediction.verdict, prediction.looks_like) == (NEITHER, None)


@needs_shipped
def test_a_missing_imagenet_head_means_distance_alone_and_one_warning(tmp_path, monkeypatch):
    import dogcat.model_folder

    folder, model = model_folder_copy(tmp_path)
    (folder / IMAGENET_HEAD_FILENAME).unlink()
    monkeypatch.setattr(dogcat.model_folder, "bundled_file", lambda *_: None)  # no shipped one either
    classifier = Classifier.from_path(model)
    assert classifier.detector.head is None
    assert classifier.verdict_warning.startswith(f"ImageNet head file not found. Received: path='{folder / IMAGENET_HEAD_FILENAME}'")
    assert "\n" not in classifier.verdict_warning
    assert classifier.predict([EXAMPLES / "cat-chelsea.jpg"])[0].verdict == CAT


def test_the_docs_describe_the_detector_in_its_own_words():
    """One description (dogcat.detector.DESCRIPTION) in the README and the model card, as the apps and the Space card give it."""
    from dogcat.detector import DESCRIPTION

    for document in (REPO / "README.md", SHIPPED / "README.md"):
        text = " ".join(document.read_text(encoding="utf-8").split())
        assert DESCRIPTION in text, document
        assert "nearest-neighbour" not in text, document
        assert "k-th nearest" not in text, document


COUGAR_PHOTO = DEV_PHOTOS / "animals-dev" / "big_cats" / "wild10__Wild_Cats_Dataset__PUMA__010.jpg"
HORSE_PHOTO = DEV_PHOTOS / "animals-dev" / "farm" / "pop__horse__horse_27_.jpg"
RACCOON_PHOTO = DEV_PHOTOS / "animals-dev" / "small_mammals" / "racc__images__raccoon-1.jpg"


@needs_shipped
@needs_dev_photos
@pytest.mark.parametrize("runtime", ["onnx", "keras", "onnx-int8"])
def test_a_cougar_called_a_cat_is_neither_and_says_why(runtime):
    """Near the Kaggle cats by distance (the last round's rule called these a cat, a dog and a cat);
    ImageNet's reading by kind turns the cougar and the horse away and doubts the raccoon."""
    classifier = Classifier.from_path(runtime=runtime)
    cougar, horse, raccoon = classifier.predict([COUGAR_PHOTO, HORSE_PHOTO, RACCOON_PHOTO])
    assert (cougar.label, cougar.verdict) == (CAT, NEITHER)
    assert (cougar.looks_like.name, cougar.looks_like.group, cougar.looks_like.imagenet_id) == ("cougar", "wild_cat", COUGAR)
    assert cougar.sentence == f"Neither a cat nor a dog: looks like a cougar ({cougar.looks_like.probability:.0%}), not a house cat"
    assert (horse.label, horse.verdict, horse.looks_like.name) == (DOG, NEITHER, "horse")
    assert horse.hint.endswith(", not a dog")
    assert (raccoon.label, raccoon.verdict, raccoon.looks_like.group) == (CAT, UNSURE, "wild_canine")
    assert classifier.detector.scores(cougar.features[None])[0] < classifier.detector.threshold  # not far: ImageNet decided


DOUBTED_BY_INT8 = DEV_PHOTOS / "pets-dev" / "dog" / "oxa__datasets__oxford-pets__data__sample_images__dogs__shiba_inu_155.jpg"


@needs_shipped
@needs_dev_photos
def test_int8_rechecks_what_the_detector_doubts_in_float32():
    """int8's features move the detector's distances and margins: this shiba is a dog to float32 but
    doubted on int8's own features, so int8 judges it again on float32's, as it does 'neither'."""
    float32, int8 = Classifier.from_path(runtime="onnx"), Classifier.from_path(runtime="onnx-int8")
    expected = float32.predict([DOUBTED_BY_INT8])[0]
    assert expected.verdict == DOG
    assert int8.predict([DOUBTED_BY_INT8])[0].verdict == DOG
    twin, int8.runner.float32_twin = int8.runner.float32_twin, None  # the case is real: int8 alone doubts it
    assert int8.predict([DOUBTED_BY_INT8])[0].verdict == UNSURE
    int8.runner.float32_twin = twin
