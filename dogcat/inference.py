"""The inference API: a loaded classifier that turns image sources into probabilities.

The CLI, `evaluate` and the apps all go through `Classifier`, which derives the input size from
the model and decodes through dogcat.preprocessing, so serving cannot drift from training.
One unreadable file becomes a `Prediction` with an `error`; the others are still predicted.
A `Classifier` can be shared between threads (a Streamlit process serves many sessions).

The network runs on one of three runtimes: Keras (the reference), ONNX Runtime, which is
faster per photo on a CPU, or ONNX Runtime on the int8 twin, for bulk work (`onnx-int8`).
`from_path` picks ONNX when `dogcat export` has written a `dog_cat_classifier.onnx` beside the
`.keras` that still matches it, else Keras; int8 is used only when asked for.
Keras is imported only when the Keras runtime is used. Both runtimes return the probabilities
and the pooled features, from which the detector (dogcat.detector) and dogcat.verdict decide each
photo's verdict and what it looks like, and, only when
asked (`explain=True`), a Grad-CAM heatmap of where the model looked (dogcat.explain).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dogcat.artifacts import (
    RUNTIMES,
    ArtifactError,
    checksum_problem,
    file_sha256,
    interrupt_requested,
    load_class_names,
)
from dogcat.detector import Detector, detector_for
from dogcat.explain import FEATURE_MAP, LOGIT_GRADIENTS, grad_cam, logit_gradients
from dogcat.model_folder import ModelFolder
from dogcat.preprocessing import ImageError, ImageSource, decode_image_with_size, to_model_input
from dogcat.verdict import Prediction, VerdictRules, decide, describe

__all__ = ["Classifier", "Prediction"]  # Prediction lives in dogcat.verdict, kept importable here


# int8 flips labels only near the boundary: a photo whose int8 top probability is under this is
# scored again in float32 (about 2% of cats and dogs; benchmarks/batch.py).
INT8_RECHECK_BELOW = 0.8


class KerasRunner:
    """The reference runtime: the `.keras` model itself."""

    name = "keras"
    parallel = False  # calls run one at a time (the lock below)

    def __init__(self, model):
        from dogcat.model import image_size_of

        self.model = model
        self.image_size = image_size_of(model)
        self.num_outputs = int(model.output_shape[-1])
        self._lock = threading.Lock()  # one call at a time: Keras gives no thread-safety promise

        from dogcat.model import with_features

        try:  # the detector's features too; a model that is not a dogcat classifier has none
            self._with_features = with_features(model)
        except ValueError:
            self._with_features = None
        self.has_features = self.can_explain = self._with_features is not None
        self._with_feature_map = None  # built on the first explanation asked for

    def __call__(self, images: np.ndarray, explain: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, pooled features or None, Grad-CAM maps (N, H, W, classes) when `explain`)."""
        with self._lock:
            if self._with_features is None:
                return np.asarray(self.model.predict_on_batch(images)), None, None
            if not explain:
                probabilities, features = self._with_features.predict_on_batch(images)
                return np.asarray(probabilities), np.asarray(features), None
            if self._with_feature_map is None:
                import keras

                from dogcat.model import HEAD_LAYERS, with_features

                self._with_feature_map = with_features(self.model, feature_map=True)
                dense, logits = (self.model.get_layer(name) for name in (HEAD_LAYERS[1], HEAD_LAYERS[-1]))
                self._head = [keras.ops.convert_to_numpy(w) for w in (dense.kernel, dense.bias, logits.kernel)]
            probabilities, features, feature_map = map(np.asarray, self._with_feature_map.predict_on_batch(images))
        gradients = logit_gradients(feature_map.mean(axis=(1, 2)), *self._head)
        return probabilities, features, grad_cam(feature_map, gradients)


NON_FINITE = "the model gave a non-finite probability (NaN or infinity): its weights are damaged"


class OnnxRunner:
    """ONNX Runtime on the file `dogcat export` wrote; `InferenceSession.run` is thread-safe.

    With `recheck` (the float32 runner beside an int8 file), photos the int8 network is unsure
    of (top probability under INT8_RECHECK_BELOW) are scored again by `recheck`, so int8 keeps
    float32's labels where quantization would flip them, for a few percent more work
    (`Classifier` also re-checks the photos the detector calls "neither" on int8's features).
    """

    parallel = True  # a session takes concurrent calls

    def __init__(self, path: Path, recheck: OnnxRunner | None = None, threads: int = 1):
        """`threads`: ONNX Runtime's intra-op threads for one call. One by default: a Classifier
        runs several calls at once (`workers`), which keeps every core busy without the barrier
        of a wide call that waits for its slowest thread while a decode holds a core."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle threads that spin hold a core the decoding and the detector's maths need (#25: -25% per photo).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.name = "onnx-int8" if self.metadata.get("dogcat_precision") == "int8" else "onnx"
        self.recheck = recheck
        self.input_name = self.session.get_inputs()[0].name
        self.image_size = int(self.metadata["dogcat_image_size"])
        self.num_outputs = int(self.session.get_outputs()[0].shape[-1])
        # Exports made before the detector have no features output: verdicts then fall back.
        self.outputs = [o.name for o in self.session.get_outputs()][:1]
        if "features" in {o.name for o in self.session.get_outputs()}:
            self.outputs = [self.session.get_outputs()[0].name, "features"]
        self.has_features = len(self.outputs) > 1
        # Exports made before Grad-CAM lack these; asked for only when explaining (a 250 KB map per photo).
        self.can_explain = self.has_features and {FEATURE_MAP, LOGIT_GRADIENTS} <= {o.name for o in self.session.get_outputs()}

    def __call__(self, images: np.ndarray, explain: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, pooled features or None, Grad-CAM maps (N, H, W, classes) when `explain`)."""
        extra = [FEATURE_MAP, LOGIT_GRADIENTS] if explain else []
        results = self.session.run(self.outputs + extra, {self.input_name: images})
        maps = grad_cam(*results[-2:]) if explain else None
        probabilities, features = results[0], (results[1] if len(self.outputs) > 1 else None)
        unsure = np.flatnonzero(probabilities.max(axis=1) < INT8_RECHECK_BELOW) if self.recheck else []
        if len(unsure):
            again = self.recheck(images[unsure], explain)
            probabilities[unsure] = again[0]
            if features is not None:
                features[unsure] = again[1]
            if explain:
                maps[unsure] = again[2]
        return probabilities, features, maps


def onnx_runner_for(model_path: Path, int8: bool = False, threads: int = 1) -> OnnxRunner | str:
    """The ONNX runner for `model_path`'s exported twin (the int8 one with `int8`), with `threads`
    intra-op threads per call, or why there is none."""
    onnx_path = ModelFolder(Path(model_path)).onnx(int8)
    filename, again = onnx_path.name, f"dogcat export --int8 {model_path} --data DATA_DIR" if int8 else f"dogcat export {model_path}"
    if not onnx_path.is_file():
        return f"no {filename} beside the model (run `{again}`)"
    damaged = checksum_problem(onnx_path)
    if damaged:
        return f"{damaged}; run `{again}` to rewrite it"
    try:
        runner = OnnxRunner(onnx_path, threads=threads)
    except Exception as error:
        if interrupt_requested():  # Ctrl-C during the load: never a reason to fall back to Keras
            raise KeyboardInterrupt from None
        if isinstance(error, ImportError):
            return "onnxruntime is not installed"
        # a damaged file: fall back rather than fail
        return f"{onnx_path} could not be loaded ({type(error).__name__}; run `{again}` to rewrite it)"
    if runner.metadata.get("dogcat_keras_sha256") != file_sha256(model_path):
        return f"{onnx_path} was exported from a different .keras file (run `{again}` again)"
    if (runner.name == "onnx-int8") != int8:
        return f"{onnx_path} is {'not ' if int8 else ''}an int8 export"
    # A gray photo must give finite probabilities: NaN or infinite weights otherwise answer every photo with NaN.
    probe = runner.session.run(runner.outputs[:1], {runner.input_name: np.full((1, runner.image_size, runner.image_size, 3),
                                                                                0.5, np.float32)})[0]
    if not np.isfinite(probe).all():
        return f"{onnx_path} gives non-finite probabilities (NaN or infinite weights)"
    if int8:
        runner.recheck = onnx_runner_for(model_path, threads=threads)  # the float twin re-scores what int8 is unsure of
        if not isinstance(runner.recheck, OnnxRunner):
            return f"the int8 twin needs the float32 one beside it: {runner.recheck}"
    return runner


class Classifier:
    def __init__(self, runner, class_names: dict[int, str], batch_size: int = 32,
                 detector: Detector | None = None, rules: VerdictRules | None = None, workers: int | None = None):
        """`runner` is a KerasRunner, an OnnxRunner, or a Keras model (wrapped in a KerasRunner).

        Without a `detector` there are no "neither" verdicts; `verdict_warning` then says why
        when `from_path` looked for one. `workers`: how many batches `predict` decodes and scores
        at once (default `default_workers`).
        """
        if not isinstance(runner, KerasRunner | OnnxRunner):
            runner = KerasRunner(runner)
        if runner.num_outputs != len(class_names):
            raise ArtifactError(
                f"Model has {runner.num_outputs} outputs but {len(class_names)} class names. Received: class_names={class_names}"
            )
        self.runner = runner
        self.runtime = runner.name
        self.class_names = class_names
        self.image_size = runner.image_size
        self.batch_size = batch_size
        self.workers = workers or default_workers(runner)
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
        model_path = folder.keras
        class_names_path = Path(class_names_path) if class_names_path else folder.class_names
        class_names = load_class_names(class_names_path)  # before the model: cheap, and refuses bad files early
        runner, runtime_warning = None, None
        if runtime != "keras":
            onnx = onnx_runner_for(model_path, int8=runtime == "onnx-int8", threads=threads)
            if isinstance(onnx, OnnxRunner):
                runner = onnx
            elif runtime != "auto":
                raise ArtifactError(f"Cannot use the {runtime} runtime: {onnx}. Received: runtime={runtime!r}")
            elif folder.onnx().is_file():  # stale or damaged: say why it is slower
                runtime_warning = f"{onnx}; using Keras instead, which is slower to start and to run"
        if runner is None:
            from dogcat.model import load_model

            runner = KerasRunner(load_model(model_path))
        detector, warning = detector_for(model_path)
        if detector is not None and not runner.has_features:
            detector = None
            warning = (f"{folder.onnx()} has no features output, so no 'neither' verdicts "
                       f"(run `dogcat export {model_path}` again)")
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
        return self._run(images)[0]

    def _run(self, images: np.ndarray, explain: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(probabilities, pooled features or None, Grad-CAM maps when `explain`) for a float32 batch,
        `batch_size` at a time."""
        outputs = [self.runner(images[start : start + self.batch_size], explain=explain)
                   for start in range(0, len(images), self.batch_size)]
        if not outputs:
            return np.zeros((0, len(self.class_names)), np.float32), None, None
        features = None if outputs[0][1] is None else np.concatenate([o[1] for o in outputs])
        maps = np.concatenate([o[2] for o in outputs]) if explain else None
        return np.concatenate([o[0] for o in outputs]), features, maps

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
        if explain and not self.can_explain:
            raise ArtifactError(f"This model cannot explain its predictions ({self._no_explanation()}). Received: explain=True")
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

    def _no_explanation(self) -> str:
        if self.runtime.startswith("onnx"):
            return "its ONNX export predates explanations: run `dogcat export` on the .keras again"
        return "not a dogcat classifier"

    def _decode_and_classify(self, sources: Sequence[ImageSource], names: list[str], rules: VerdictRules,
                             explain: bool) -> list[Prediction]:
        return self._classify(names, decode_sources(sources, names, self.image_size), rules, explain)

    def classify_decoded(self, names: list[str], decoded: list, rules: VerdictRules | None = None,
                         explain: bool = False) -> list[Prediction]:
        """Predictions for sources already decoded by `decode_sources` (a bulk job decodes in other
        processes, dogcat.batch; the HTTP API decodes each upload as it arrives, dogcat.serve); the
        same scoring and verdicts as `predict`."""
        if explain and not self.can_explain:
            raise ArtifactError(f"This model cannot explain its predictions ({self._no_explanation()}). Received: explain=True")
        return [p for start in range(0, len(names), self.batch_size)
                for p in self._classify(names[start : start + self.batch_size],
                                        decoded[start : start + self.batch_size], rules or self.rules, explain)]

    def _classify(self, names: list[str], decoded: list, rules: VerdictRules, explain: bool = False) -> list[Prediction]:
        good = [item for item in decoded if not isinstance(item, str)]
        if not good:
            return [Prediction(name, error=item) for name, item in zip(names, decoded, strict=True)]
        inputs = to_model_input(np.stack([image for image, _ in good]))
        probabilities, features, maps = self._run(inputs, explain)
        neither, unsure, looks_like = [None] * len(good), np.zeros(len(good), bool), [None] * len(good)
        if self.detector is not None and features is not None:
            judged = self.detector.judge(features)
            neither, unsure, looks_like = judged.neither, judged.unsure, judged.looks_like
        recheck = getattr(self.runner, "recheck", None)
        if recheck is not None and self.detector is not None and features is not None and np.any(neither | unsure):
            # int8's features move the detector's distances: a photo int8 calls "neither" or doubts
            # is judged again on float32's, as an unsure label is (OnnxRunner).
            rows = np.flatnonzero(neither | unsure)
            again = recheck(inputs[rows], explain)
            probabilities[rows], features[rows] = again[0], again[1]
            if explain:
                maps[rows] = again[2]
            judged = self.detector.judge(again[1])
            neither[rows], unsure[rows] = judged.neither, judged.unsure
            for row, seen in zip(rows, judged.looks_like, strict=True):
                looks_like[row] = seen
        if features is None:
            features = [None] * len(good)
        # Each photo's map for the class it was labelled (argmax), whatever its verdict.
        heatmaps = [m[..., int(np.argmax(p))] for m, p in zip(maps, probabilities, strict=True)] if explain else [None] * len(good)
        results = iter(zip(good, probabilities, neither, unsure, looks_like, features, heatmaps, strict=True))
        predictions = []
        for name, item in zip(names, decoded, strict=True):
            if isinstance(item, str):
                predictions.append(Prediction(name, error=item))
                continue
            (_, size), row, is_neither, is_unsure, seen, pooled, heatmap = next(results)
            if not np.isfinite(row).all() or (pooled is not None and not np.isfinite(pooled).all()):  # never a verdict
                predictions.append(Prediction(name, error=NON_FINITE))
                continue
            named = {self.class_names[c]: float(p) for c, p in enumerate(row)}
            verdict = decide(named, size, None if is_neither is None else bool(is_neither), rules, bool(is_unsure))
            text = describe(verdict, named, size, rules)
            predictions.append(Prediction(name, named, verdict=verdict, text=text, size=size, looks_like=seen,
                                          features=pooled, heatmap=heatmap))
        return predictions

    def classify_one(self, source: ImageSource) -> Prediction:
        """One source's Prediction, verdict included; an unreadable source comes back with `error`."""
        return self.predict([source])[0]

    def predict_one(self, source: ImageSource) -> dict[str, float]:
        """{class name: probability} for one image; raises ImageError with a one-line reason."""
        image = to_model_input(decode_image_with_size(source, self.image_size)[0])
        return {self.class_names[c]: float(p) for c, p in enumerate(self.predict_batch(image)[0])}


def default_workers(runner) -> int:
    """Batches a Classifier decodes and scores at once: on ONNX Runtime, enough single-threaded
    calls for every core this process may use (at least two, so one decodes while one scores);
    on Keras, which spreads one call over the cores itself, two."""
    if not isinstance(runner, OnnxRunner):
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, cores // max(1, runner.threads))


def decode_sources(sources: Sequence[ImageSource], names: Sequence[str], image_size: int) -> list[tuple[np.ndarray, tuple[int, int]] | str]:
    """Each source as (uint8 image, upright size) for the model, or the one-line reason it could not be read."""
    decoded: list[tuple[np.ndarray, tuple[int, int]] | str] = []
    for source, name in zip(sources, names, strict=True):
        try:
            decoded.append(decode_image_with_size(source, image_size))
        except ImageError as error:
            decoded.append(str(error).removeprefix(f"{name}: ").removeprefix("image: "))
    return decoded


def _describe(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return getattr(source, "name", None) or type(source).__name__
