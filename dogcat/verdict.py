"""Verdicts: cat, dog, neither, unsure or too small, decided in one place for every path.

- **neither**: the "neither" detector (dogcat.detector) says the photo is far from every training
  photo and ImageNet's classes see no cat or dog in it.
- **too small**: the shorter side is below `min_side`, where accuracy falls under 95%
  (benchmarks/verdicts.py measures the curve).
- **unsure**: the top probability is below the threshold (`predict.threshold`).

Each prediction also carries `looks_like`, the most probable ImageNet class and its probability
("tiger", 0.84): a hint of what the photo shows, never a claim about a breed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dogcat.config import PredictConfig
from dogcat.printable import printable

CAT, DOG, NEITHER, UNSURE, TOO_SMALL = "cat", "dog", "neither", "unsure", "too_small"
VERDICTS = (CAT, DOG, NEITHER, UNSURE, TOO_SMALL)
NON_FINITE = "the model gave a non-finite probability (NaN or infinity): its weights are damaged"


class LooksLike(NamedTuple):
    """A photo's most probable ImageNet class: its everyday name ("tabby cat" for ImageNet's "tiger
    cat"), its probability, "cat" or "dog" where the class is a domestic cat or a dog breed (else
    None), its ImageNet (WordNet) id and its group (dogcat.imagenet_groups: "big_cat", "ungulate"...)."""

    name: str
    probability: float
    animal: str | None = None
    imagenet_id: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Prediction:
    """One source's result: `probabilities` maps every class name to its probability, or `error` says why not.

    `verdict` is "cat", "dog", "neither", "unsure" or "too_small" (`decide`); `text` says it in
    words. `size` is the photo's upright (width, height) as given. `looks_like` is its most probable
    ImageNet class (`LooksLike`), None without the detector's ImageNet head.
    `features` are the pooled network features the detector read (None where the runtime has none).
    `heatmap` is the Grad-CAM map (H, W) in [0, 1] for `label`, when explaining (dogcat.explain.overlay draws it).
    """

    source: str
    probabilities: dict[str, float] | None = None
    error: str | None = None
    verdict: str | None = None
    text: str | None = None
    size: tuple[int, int] | None = None
    looks_like: LooksLike | None = None
    features: np.ndarray | None = field(default=None, repr=False, compare=False)
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str | None:
        if self.probabilities is None:
            return None
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def as_row(self, class_names: Iterable[str]) -> dict:
        """The one machine-readable prediction (`row_columns`): a `dogcat predict --json` line, a `--csv` and
        batch Parquet row, an HTTP API and Gradio API answer. Flat, so a table holds all of it: a `p_<class>`
        column per class in `class_names`' order (an unreadable photo has them too), None where no value."""
        seen, (width, height), probabilities = self.looks_like, self.size or (None, None), self.probabilities or {}
        return {"path": printable(self.source), "verdict": self.verdict, "label": self.label,
                **{f"p_{name}": probabilities.get(name) for name in class_names}, "width": width, "height": height,
                "looks_like": seen and seen.name, "p_looks_like": seen and seen.probability,
                "looks_like_id": seen and seen.imagenet_id, "looks_like_group": seen and seen.group,
                "reason": self.hint, "error": self.error}

    @property
    def hint(self) -> str | None:
        """"looks like a cougar (85%), not a house cat" where that says something (`hint`), else None."""
        return hint(self.verdict, self.looks_like, self.label)

    @property
    def sentence(self) -> str | None:
        """The verdict and its hint in one line: "Neither a cat nor a dog: looks like a tiger (84%)"."""
        return self.text if self.hint is None else f"{self.text}: {self.hint}"


def row_columns(class_names: Iterable[str]) -> list[str]:
    """The columns of `Prediction.as_row`, in order: the tables' one schema."""
    return list(Prediction("").as_row(class_names))


@dataclass(frozen=True)
class VerdictRules:
    """What turns probabilities into a verdict; the defaults are dogcat.config.PredictConfig's,
    a model's own come from the `config.toml` saved beside it (`Classifier.from_path`)."""

    unsure_below: float = PredictConfig.threshold
    min_side: int = PredictConfig.min_side

    @classmethod
    def from_config(cls, predict: PredictConfig) -> VerdictRules:
        return cls(unsure_below=predict.threshold, min_side=predict.min_side)


def decide(probabilities: dict[str, float], size: tuple[int, int] | None, is_neither: bool | None,
           rules: VerdictRules = VerdictRules(), is_unsure: bool = False) -> str:
    """The one verdict function: too_small, neither, unsure, or the top class, in that order.

    Too small comes first: it is the more useful explanation for a thumbnail, which the
    detector may also find unusual. `is_neither` is None without a detector; `is_unsure` is the
    detector's doubt (an unusual photo, or one that looks more like a wolf than any pet did).
    """
    if size is not None and min(size) < rules.min_side:
        return TOO_SMALL
    if is_neither:
        return NEITHER
    label = max(probabilities, key=probabilities.__getitem__)
    return label if probabilities[label] >= rules.unsure_below and not is_unsure else UNSURE


def prediction_for(name: str, size: tuple[int, int], row: np.ndarray, is_neither: bool | None, is_unsure: bool,
                   looks_like: LooksLike | None, features: np.ndarray | None, heatmap: np.ndarray | None, *,
                   classes: Iterable[str], rules: VerdictRules) -> Prediction:
    """One photo's Prediction from its scores (`row`: a probability per class, in `classes`' order):
    its verdict and sentence, or NON_FINITE as its error, since NaN must never become a verdict."""
    if not np.isfinite(row).all() or (features is not None and not np.isfinite(features).all()):
        return Prediction(name, error=NON_FINITE)
    named = {label: float(p) for label, p in zip(classes, row, strict=True)}
    verdict = decide(named, size, None if is_neither is None else bool(is_neither), rules, bool(is_unsure))
    return Prediction(name, named, verdict=verdict, text=describe(verdict, named, size, rules), size=size,
                      looks_like=looks_like, features=features, heatmap=heatmap)


def describe(verdict: str, probabilities: dict[str, float], size: tuple[int, int] | None,
             rules: VerdictRules = VerdictRules()) -> str:
    """The verdict as a short sentence for people (apps, the CLI table)."""
    if verdict == NEITHER:
        return "Neither a cat nor a dog"
    if verdict == TOO_SMALL:
        width, height = size
        return f"Too small to judge ({width}x{height} px; needs {rules.min_side} px on the shorter side)"
    if verdict == UNSURE:
        return f"Not sure (maybe {max(probabilities, key=probabilities.__getitem__)})"
    return f"{verdict[0].upper()}{verdict[1:]}"


def hint(verdict: str | None, looks_like: LooksLike | None, label: str | None = None) -> str | None:
    """What the photo looks like, where that says something: for "neither" and "unsure" always,
    for a cat or a dog only when ImageNet's top class is a breed of that animal; never for a
    photo too small to judge. Where the classifier's `label` was a cat or a dog and ImageNet sees
    another animal, "neither" says so: "looks like a cougar (85%), not a house cat"."""
    if looks_like is None or verdict in (None, TOO_SMALL):
        return None
    if verdict in (CAT, DOG) and looks_like.animal != verdict:
        return None
    said = looks_like_text(looks_like)
    if verdict == NEITHER and label in PET_NAMES and looks_like.group in OTHER_ANIMALS:
        said += f", not {PET_NAMES[label]}"
    return said


# The classifier's two labels as a pet owner says them, after "not": a cougar is "not a house cat".
PET_NAMES = {CAT: "a house cat", DOG: "a dog"}
# ImageNet groups that are animals other than pets (dogcat.imagenet_groups.GROUPS less dogs, house cats,
# things, food, plants and people): "looks like a car, not a house cat" would say nothing new.
OTHER_ANIMALS = frozenset({
    "wild_cat", "big_cat", "wild_canine", "bear", "mustelid", "other_carnivore", "rodent_rabbit", "primate",
    "ungulate", "elephant", "marsupial", "xenarthran", "marine_mammal", "bird", "fish", "reptile_amphibian",
    "invertebrate",
})


def looks_like_text(looks_like: LooksLike) -> str:
    """LooksLike("tiger", 0.84) -> "looks like a tiger (84%)": a hint, worded as one."""
    article = "an" if looks_like.name[:1].lower() in "aeiou" else "a"
    return f"looks like {article} {looks_like.name} ({looks_like.probability:.0%})"
