"""What a `Classifier` scores photos on: Keras (the reference, imported only when used), ONNX
Runtime, faster per photo on a CPU, or ONNX Runtime on the int8 twin, for bulk work. Each gives
`Scores`. A runtime decides nothing: the int8 runner holds its float32 twin, and
`Classifier._recheck_in_float32` says which photos it scores again."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dogcat.artifacts import ArtifactError, checksum_problem, file_sha256, interrupt_requested
from dogcat.explain import FEATURE_MAP, LOGIT_GRADIENTS, grad_cam, logit_gradients
from dogcat.model_folder import ModelFolder

# int8 flips labels only near the boundary: a photo whose int8 top probability is under this is
# scored again in float32 (about 2% of cats and dogs; benchmarks/batch.py).
INT8_RECHECK_BELOW = 0.8


class Scores(NamedTuple):
    """A batch's scores, as a runtime gives them."""

    probabilities: np.ndarray  # (N, classes)
    features: np.ndarray | None  # pooled (N, width), for the detector; None from a model without them
    maps: np.ndarray | None  # Grad-CAM (N, H, W, classes) when explaining (dogcat.explain), else None


class KerasRunner:
    """The reference runtime: the `.keras` model itself."""

    name = "keras"
    parallel = False  # calls run one at a time (the lock below)

    def __init__(self, model):
        from dogcat.model import image_size_of, with_features

        self.model = model
        self.image_size = image_size_of(model)
        self.num_outputs = int(model.output_shape[-1])
        self._lock = threading.Lock()  # one call at a time: Keras gives no thread-safety promise
        try:  # the detector's features too; a model that is not a dogcat classifier has none
            self._with_features = with_features(model)
        except ValueError:
            self._with_features = None
        self.has_features = self.can_explain = self._with_features is not None
        self._with_feature_map = None  # built on the first explanation asked for

    def __call__(self, images: np.ndarray, explain: bool = False) -> Scores:
        with self._lock:
            if self._with_features is None:
                return Scores(np.asarray(self.model.predict_on_batch(images)), None, None)
            if not explain:
                probabilities, features = self._with_features.predict_on_batch(images)
                return Scores(np.asarray(probabilities), np.asarray(features), None)
            if self._with_feature_map is None:
                import keras

                from dogcat.model import HEAD_LAYERS, with_features

                self._with_feature_map = with_features(self.model, feature_map=True)
                dense, logits = (self.model.get_layer(name) for name in (HEAD_LAYERS[1], HEAD_LAYERS[-1]))
                self._head = [keras.ops.convert_to_numpy(w) for w in (dense.kernel, dense.bias, logits.kernel)]
            probabilities, features, feature_map = map(np.asarray, self._with_feature_map.predict_on_batch(images))
        gradients = logit_gradients(feature_map.mean(axis=(1, 2)), *self._head)
        return Scores(probabilities, features, grad_cam(feature_map, gradients))


class OnnxRunner:
    """ONNX Runtime on the file `dogcat export` wrote; `InferenceSession.run` is thread-safe.
    An int8 runner's `float32_twin` is the float32 one beside it (`onnx_runner_for`)."""

    parallel = True  # a session takes concurrent calls

    def __init__(self, path: Path, threads: int = 1):
        """`threads`: ONNX Runtime's intra-op threads for one call. One by default: a Classifier
        runs several calls at once (`workers`), which keeps every core busy without the barrier
        of a wide call that waits for its slowest thread while a decode holds a core."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle threads that spin hold a core the decoding and the detector's maths need (measured: 25% slower per photo).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.name = "onnx-int8" if self.metadata.get("dogcat_precision") == "int8" else "onnx"
        self.float32_twin: OnnxRunner | None = None
        self.input_name = self.session.get_inputs()[0].name
        self.image_size = int(self.metadata["dogcat_image_size"])
        self.num_outputs = int(self.session.get_outputs()[0].shape[-1])
        # Exports made before the detector have no features output: verdicts then fall back.
        names = [o.name for o in self.session.get_outputs()]
        self.has_features = "features" in names
        self.outputs = names[:1] + (["features"] if self.has_features else [])
        # Exports made before Grad-CAM lack these; asked for only when explaining (a 250 KB map per photo).
        self.can_explain = self.has_features and {FEATURE_MAP, LOGIT_GRADIENTS} <= set(names)

    def __call__(self, images: np.ndarray, explain: bool = False) -> Scores:
        extra = [FEATURE_MAP, LOGIT_GRADIENTS] if explain else []
        results = self.session.run(self.outputs + extra, {self.input_name: images})
        return Scores(results[0], results[1] if self.has_features else None, grad_cam(*results[-2:]) if explain else None)


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
        twin = onnx_runner_for(model_path, threads=threads)
        if not isinstance(twin, OnnxRunner):
            return f"the int8 twin needs the float32 one beside it: {twin}"
        runner.float32_twin = twin
    return runner


def runner_for(folder: ModelFolder, runtime: str, threads: int = 1) -> tuple[KerasRunner | OnnxRunner, str | None]:
    """The runner `runtime` asks for in `folder`, and a warning when "auto" fell back to Keras from
    an ONNX twin that is there but stale or damaged (why it is slower). An explicit ONNX runtime
    that cannot load is an ArtifactError, never a silent fallback."""
    if runtime != "keras":
        onnx = onnx_runner_for(folder.keras, int8=runtime == "onnx-int8", threads=threads)
        if isinstance(onnx, OnnxRunner):
            return onnx, None
        if runtime != "auto":
            raise ArtifactError(f"Cannot use the {runtime} runtime: {onnx}. Received: runtime={runtime!r}")
        warning = f"{onnx}; using Keras instead, which is slower to start and to run" if folder.onnx().is_file() else None
    else:
        warning = None
    from dogcat.model import load_model

    return KerasRunner(load_model(folder.keras)), warning


def default_workers(runner) -> int:
    """Batches a Classifier decodes and scores at once: on ONNX Runtime, enough single-threaded
    calls for every core this process may use (at least two, so one decodes while one scores);
    on Keras, which spreads one call over the cores itself, two."""
    if not isinstance(runner, OnnxRunner):
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, cores // max(1, runner.threads))
