"""The inference API: a loaded classifier that turns image sources into probabilities.

The CLI, `evaluate` and the apps all go through `Classifier`, which derives the input size from
the model and decodes through dogcat.preprocessing, so serving cannot drift from training.
One unreadable file becomes a `Prediction` with an `error`; the others are still predicted.
A `Classifier` can be shared between threads (a Streamlit process serves many sessions).

The network runs on a runtime (dogcat.runtimes): `from_path` picks ONNX when `dogcat export`
wrote a `dog_cat_classifier.onnx` that matches the `.keras`, else Keras; int8 only when asked
for. From its scores dogcat.detector and dogcat.verdict decide each photo's verdict.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dogcat import runtimes
from dogcat.artifacts import RUNTIMES, ArtifactError, load_class_names
from dogcat.detector import Detector, Judgement, detector_for
from dogcat.model_folder import ModelFolder
from dogcat.preprocessing import (
    ImageError,
    ImageSource,
    decode_image_with_size,
    decode_sources,
    to_model_input,
)
from dogcat.verdict import Prediction, VerdictRules, prediction_for

__all__ = ["Classifier", "Prediction"]  # Prediction lives in dogcat.verdict, kept importable here


class Classifier:
    """A loaded model: the one way every path (CLI, apps, HTTP API, batch) classifies, so none drifts.

    `from_path(model_path=None, runtime=None)` loads one (default `$DOGCAT_MODEL`, else the shipped
    model); `predict(sources)` -> [Prediction] in input order, an unreadable source with `error` set
    (`predict_batches` yields them as they are done, `predict_one(source)` for one); `probabilities(source)`
    -> {class: p}, no verdict; `predict_batch(images)` for model inputs, `classify_decoded` for photos
    decoded elsewhere (dogcat.batch, dogcat.serve); `warnings`, `can_explain`, `class_names`, `rules`.
    Example: `Classifier.from_path().predict_one("demos/examples/cat-chelsea.jpg").verdict == "cat"`.
    """

    def __init__(self, runner, class_names: dict[int, str], batch_size: int = 32,
                 detector: Detector | None = None, rules: VerdictRules | None = None, workers: int | None = None):
        """`runner` is a KerasRunner, an OnnxRunner (dogcat.runtimes), or a Keras model (wrapped in a KerasRunner).

        Without a `detector` there are no "neither" verdicts; `verdict_warning` then says why
        when `from_path` looked for one. `workers`: how many batches `predict` decodes and scores
        at once (default `default_workers`).
        """
        if not isinstance(runner, runtimes.KerasRunner | runtimes.OnnxRunner):
            runner = runtimes.KerasRunner(runner)
        if runner.num_outputs != len(class_names):
            raise ArtifactError(
                f"Model has {runner.num_outputs} outputs but {len(class_names)} class names. Received: class_names={class_names}"
            )
        self.runner = runner
        self.runtime = runner.name
        self.class_names = class_names
        self.image_size = runner.image_size
        self.batch_size = batch_size
        self.workers = workers or runtimes.default_workers(runner)
        self.detector = detector
        self.rules = rules or VerdictRules()
        self.verdict_warning: str | None = None
        self.runtime_warning: str | None = None  # `from_path` fell back to Keras from a stale or damaged ONNX twin
        self.config_warning: str | None = None  # the model's config.toml could not be used

    @property
    def warnings(self) -> list[str]:
        """The one-line warnings a user should see (the runtime's fallback, the verdicts' limits)."""
        return [w for w in (self.runtime_warning, self.verdict_warning, self.config_warning) if w]

    @classmethod
    def from_path(
        cls,
        model_path: str | Path | None = None,
        class_names_path: str | Path | None = None,
        batch_size: int | None = None,
        runtime: str | None = None,
        threads: int = 1,
    ) -> Classifier:
        """Load a `.keras` model (or its ONNX twin) and the `class_names.pkl` beside it.

        `runtime`: "auto" (ONNX if a matching export exists, else Keras), "keras", "onnx" or
        "onnx-int8" (the int8 twin, for bulk work); default $DOGCAT_RUNTIME, else "auto".
        The verdict rules and the batch size are the model's `[predict]` settings, from the
        `config.toml` its run saved beside it (`ModelFolder.predict_config`); `batch_size` overrides.
        `threads`: ONNX Runtime's threads per call (`OnnxRunner`); Keras chooses its own.
        """
        runtime = runtime or os.environ.get("DOGCAT_RUNTIME") or "auto"
        if runtime not in RUNTIMES:
            raise ArtifactError(f"runtime must be one of {RUNTIMES}. Received: runtime={runtime!r}")
        folder = ModelFolder.resolve(model_path)  # first: a mistyped --model must be named, not the class names beside it
        # The class names before the model: cheap, and refuses bad files early.
        class_names = load_class_names(Path(class_names_path) if class_names_path else folder.class_names)
        runner, runtime_warning = runtimes.runner_for(folder, runtime, threads)
        detector, warning = detector_for(folder.keras)
        if detector is not None and not runner.has_features:
            detector = None
            warning = (f"{folder.onnx()} has no features output, so no 'neither' verdicts "
                       f"(run `dogcat export {folder.keras}` again)")
        config_warnings: list[str] = []
        settings = folder.predict_config(config_warnings)
        classifier = cls(runner, class_names, batch_size or settings.batch_size, detector, VerdictRules.from_config(settings))
        classifier.verdict_warning = warning
        classifier.runtime_warning = runtime_warning
        classifier.config_warning = config_warnings[0] if config_warnings else None
        return classifier

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, size, size, 3) in [0, 1] -> probabilities (N, num_classes)."""
        images = np.asarray(images, dtype=np.float32)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ImageError(f"Expected images of shape (N, {', '.join(map(str, expected))}). Received: shape={images.shape}")
        scores = self._run(images)
        self._recheck_in_float32(images, scores, None, explain=False)
        return scores.probabilities

    def _run(self, images: np.ndarray, explain: bool = False, runner=None) -> runtimes.Scores:
        """`runner`'s (default this classifier's) scores for a float32 batch, `batch_size` at a time."""
        outputs = [(runner or self.runner)(images[start : start + self.batch_size], explain=explain)
                   for start in range(0, len(images), self.batch_size)]
        if not outputs:
            return runtimes.Scores(np.zeros((0, len(self.class_names)), np.float32), None, None)
        return runtimes.Scores(*(None if part[0] is None else np.concatenate(part) for part in zip(*outputs, strict=True)))

    def _recheck_in_float32(self, inputs: np.ndarray, scores: runtimes.Scores, judged: Judgement | None,
                            explain: bool) -> None:
        """The README's int8 promise, float32's verdicts: photos int8 is unsure of (top probability
        under INT8_RECHECK_BELOW) or that the detector calls "neither" or doubts are scored again
        by the float32 twin, and judged again on its features; `scores` and `judged` (the
        detector's, None without one) change in place. Nothing to do off int8."""
        twin = getattr(self.runner, "float32_twin", None)
        if twin is None:
            return
        doubted = scores.probabilities.max(axis=1) < runtimes.INT8_RECHECK_BELOW
        if judged is not None:
            doubted |= judged.neither | judged.unsure
        rows = np.flatnonzero(doubted)
        if not len(rows):
            return
        for mine, again in zip(scores, self._run(inputs[rows], explain, twin), strict=True):
            if mine is not None:
                mine[rows] = again
        if judged is not None:
            again = self.detector.judge(scores.features[rows])
            judged.neither[rows], judged.unsure[rows] = again.neither, again.unsure
            for row, seen in zip(rows, again.looks_like, strict=True):
                judged.looks_like[row] = seen

    @property
    def can_explain(self) -> bool:
        """Whether `predict(..., explain=True)` works: a dogcat classifier, or an export that has Grad-CAM's outputs."""
        return self.runner.can_explain

    def predict(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None,
                rules: VerdictRules | None = None, explain: bool = False) -> list[Prediction]:
        """Predict every source; unreadable ones come back with `error` set, in input order.

        `rules` overrides the classifier's verdict rules for this call (an app's slider).
        `explain`: also give each prediction its Grad-CAM `heatmap` (dogcat.explain); off, nothing
        extra is computed.
        """
        return [p for batch in self.predict_batches(sources, names, rules, explain) for p in batch]

    def predict_batches(self, sources: Sequence[ImageSource], names: Sequence[str] | None = None,
                        rules: VerdictRules | None = None, explain: bool = False) -> Iterator[list[Prediction]]:
        """`predict`, a list of predictions at a time (a batch, or a part of one), in input order,
        as each is done: a command line prints rows while the rest are still being classified.

        `workers` threads each decode a batch and score it (Pillow and both runtimes release the
        GIL): on ONNX Runtime one single-threaded call per core, on Keras one batch decoding
        while the other holds the model, so decoding hides behind inference instead of adding to
        it. On ONNX Runtime each batch of `batch_size` is split between the threads, so that no
        more photos than a batch are in the network at once (its memory: about 15 MB a photo in
        float32) and a call of a few photos still uses every core. At most one part waits,
        done, beyond those being worked on.
        """
        self._check_explainable(explain)
        names = list(names) if names is not None else [_describe(s) for s in sources]
        size = max(1, math.ceil(min(self.batch_size, len(sources)) / (self.workers if self.runner.parallel else 1)))
        chunks = [(sources[i : i + size], names[i : i + size]) for i in range(0, len(sources), size)]
        rules = rules or self.rules
        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dogcat-predict") as lanes:
            try:
                for chunk in chunks:
                    pending.append(lanes.submit(self._decode_and_classify, *chunk, rules, explain))
                    if len(pending) > self.workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # a Ctrl-C or a caller that stops early: the batches not started yet never are
                for future in pending:
                    future.cancel()

    def _check_explainable(self, explain: bool) -> None:
        if explain and not self.can_explain:
            why = ("its ONNX export predates explanations: run `dogcat export` on the .keras again"
                   if self.runtime.startswith("onnx") else "not a dogcat classifier")
            raise ArtifactError(f"This model cannot explain its predictions ({why}). Received: explain=True")

    def _decode_and_classify(self, sources: Sequence[ImageSource], names: list[str], rules: VerdictRules,
                             explain: bool) -> list[Prediction]:
        return self._classify(names, decode_sources(sources, names, self.image_size), rules, explain)

    def classify_decoded(self, names: list[str], decoded: list, rules: VerdictRules | None = None,
                         explain: bool = False) -> list[Prediction]:
        """Predictions for sources already decoded by `decode_sources` (a bulk job decodes in other
        processes, dogcat.batch; the HTTP API decodes each upload as it arrives, dogcat.serve); the
        same scoring and verdicts as `predict`."""
        self._check_explainable(explain)
        return [p for start in range(0, len(names), self.batch_size)
                for p in self._classify(names[start : start + self.batch_size],
                                        decoded[start : start + self.batch_size], rules or self.rules, explain)]

    def _classify(self, names: list[str], decoded: list, rules: VerdictRules, explain: bool = False) -> list[Prediction]:
        good = [item for item in decoded if not isinstance(item, str)]
        if not good:
            return [Prediction(name, error=item) for name, item in zip(names, decoded, strict=True)]
        inputs = to_model_input(np.stack([image for image, _ in good]))
        probabilities, features, maps = scores = self._run(inputs, explain)
        judged = self.detector.judge(features) if self.detector is not None and features is not None else None
        self._recheck_in_float32(inputs, scores, judged, explain)
        nothing = [None] * len(good)
        neither, unsure, looks_like = (judged.neither, judged.unsure, judged.looks_like) if judged else (nothing,) * 3
        # Each photo's map for the class it was labelled (argmax), whatever its verdict.
        heatmaps = [m[..., int(np.argmax(p))] for m, p in zip(maps, probabilities, strict=True)] if explain else nothing
        results = iter(zip(probabilities, neither, unsure, looks_like, nothing if features is None else features,
                           heatmaps, strict=True))
        return [Prediction(name, error=item) if isinstance(item, str) else prediction_for(
                    name, item[1], *next(results), classes=self.class_names.values(), rules=rules)
                for name, item in zip(names, decoded, strict=True)]

    def predict_one(self, source: ImageSource) -> Prediction:
        """`predict` for one source: its Prediction, verdict included, or `error` set."""
        return self.predict([source])[0]

    def probabilities(self, source: ImageSource) -> dict[str, float]:
        """{class name: probability} for one image: the network alone, no verdict; raises ImageError in one line."""
        image = to_model_input(decode_image_with_size(source, self.image_size)[0])
        return {self.class_names[c]: float(p) for c, p in enumerate(self.predict_batch(image)[0])}


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return getattr(source, "name", None) or type(source).__name__
