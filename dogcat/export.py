"""`dogcat export`: the `.keras` classifier as ONNX files for ONNX Runtime.

ONNX Runtime runs the network several milliseconds faster per photo than a Keras call on a
CPU, and needs neither TensorFlow nor JAX. The graph is written by dogcat.onnx_graph from the
model's own weights (any Keras backend, no tf2onnx). Besides the probabilities it returns the
pooled features the "neither" detector reads and what Grad-CAM needs, so an ONNX-only install
gives the same verdicts and heatmaps as Keras. The file goes beside the `.keras` as `dog_cat_classifier.onnx` and records
the sha256 of the `.keras` it came from, so a Classifier uses it only while it still matches
(see dogcat.inference).

`export_int8` (`dogcat export --int8 --data DIR`) writes a second twin for bulk work,
`dog_cat_classifier.int8.onnx`: the float twin quantized by ONNX Runtime's own tools (static,
QDQ, int8 weights per channel, uint8 activations calibrated on training photos). It is about
twice as fast on a CPU with int8 dot products (AVX-512 VNNI, AVX-VNNI, ARM dot product) and agrees with
float32 on labels, not to 1e-4: its contract is label agreement, accuracy and log loss
(benchmarks/batch.py measures it). Two choices keep it close to float32:
- the last 1x1 convolution and the head stay float32. That convolution's output (the feature
  map Grad-CAM and the detector read) lost the most when quantized (7.9 dB signal-to-noise,
  against 10-12 dB for every other tensor), and it is a few percent of the network's work;
- a photo int8 is unsure of is scored again in float32 (`Classifier._recheck_in_float32`), since
  quantization flips labels only near the boundary.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from dogcat.artifacts import (
    ArtifactError,
    file_sha256,
    load_class_names,
    record_checksum,
    save_atomic,
)
from dogcat.model_folder import ModelFolder

CALIBRATION_PHOTOS = 200  # more moved no measured number (400 and 800 were tried); quantizing takes ~10 s
CALIBRATION_BATCH = 20


def export_onnx(model_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Write the ONNX twin of `model_path` (default: beside it) and return its path."""
    from dogcat.model import image_size_of, load_model
    from dogcat.onnx_graph import classifier_to_onnx

    model_path = Path(model_path)
    out_path = Path(out_path) if out_path is not None else ModelFolder(model_path).onnx()
    class_names = load_class_names(ModelFolder(model_path).class_names)
    model = load_model(model_path)
    proto = classifier_to_onnx(model)
    metadata = {
        "dogcat_keras_sha256": file_sha256(model_path),
        "dogcat_class_names": json.dumps({str(k): v for k, v in class_names.items()}),
        "dogcat_image_size": str(image_size_of(model)),
    }
    _set_metadata(proto, metadata)
    save_atomic(out_path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    record_checksum(out_path)  # the protobuf has no checksum of its own (dogcat.artifacts.CHECKSUMS_FILENAME)
    return out_path


def export_int8(model_path: str | Path, data_dir: str | Path, out_path: str | Path | None = None,
                calibration_photos: int = CALIBRATION_PHOTOS, seed: int = 0) -> Path:
    """Write the int8 twin of `model_path` (default: `dog_cat_classifier.int8.onnx` beside it).

    Quantized from the float twin beside the model, which is exported first when it is missing
    or stale (that needs Keras; a current float twin does not). Activation ranges are calibrated
    on `calibration_photos` photos of `data_dir`'s train split (a prepared dataset, or class
    sub-folders), drawn with `seed`, decoded exactly as served.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from dogcat.data import read_split
    from dogcat.runtimes import OnnxRunner, onnx_runner_for

    model_path = Path(model_path)
    out_path = Path(out_path) if out_path is not None else ModelFolder(model_path).onnx(int8=True)
    if calibration_photos < CALIBRATION_BATCH:
        raise ArtifactError(f"calibration_photos must be at least {CALIBRATION_BATCH}. "
                            f"Received: calibration_photos={calibration_photos}")
    float_twin = onnx_runner_for(model_path)
    if not isinstance(float_twin, OnnxRunner):
        export_onnx(model_path)
        float_twin = onnx_runner_for(model_path)
        if not isinstance(float_twin, OnnxRunner):
            raise ArtifactError(f"Cannot quantize: {float_twin}. Received: model_path={str(model_path)!r}")
    photos = _calibration_photos(read_split(data_dir, "train").paths, calibration_photos, seed, float_twin.image_size)
    float_path = ModelFolder(model_path).onnx()
    with tempfile.TemporaryDirectory(prefix="dogcat-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Folds BatchNorm into the convolutions and infers shapes, as ONNX Runtime's guide asks.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        last_conv = max(i for i, node in enumerate(graph.node) if node.op_type == "Conv")
        quantized = Path(scratch) / "int8.onnx"
        quantize_static(
            str(prepared), str(quantized), _CalibrationPhotos(photos, float_twin.input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=[node.name for node in graph.node[last_conv:]],  # the last conv and the head stay float32
        )
        proto = onnx.load(str(quantized))
    metadata = dict(float_twin.metadata)
    metadata.update({"dogcat_precision": "int8", "dogcat_calibration_photos": str(len(photos)),
                     "dogcat_float_onnx_sha256": file_sha256(float_path)})
    del proto.metadata_props[:]
    _set_metadata(proto, metadata)
    save_atomic(out_path, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
    record_checksum(out_path)  # the protobuf has no checksum of its own (dogcat.artifacts.CHECKSUMS_FILENAME)
    return out_path


def _calibration_photos(paths: list[Path], count: int, seed: int, image_size: int) -> np.ndarray:
    """`count` photos drawn from `paths` with `seed`, as the model's float32 input; unreadable ones are passed over."""
    from dogcat.preprocessing import ImageError, decode_image_with_size, to_model_input

    order = np.random.default_rng(seed).permutation(len(paths))
    images = []
    for index in order:
        try:
            images.append(decode_image_with_size(paths[index], image_size)[0])
        except ImageError:
            continue
        if len(images) == count:
            break
    if len(images) < CALIBRATION_BATCH:
        raise ArtifactError(f"Too few readable training photos to calibrate int8 ({len(images)}, need "
                            f"{CALIBRATION_BATCH}). Received: photos={len(paths)}")
    return to_model_input(np.stack(images))


class _CalibrationPhotos:
    """ONNX Runtime's CalibrationDataReader protocol over a float32 array of photos."""

    def __init__(self, photos: np.ndarray, input_name: str):
        self._batches = iter([{input_name: photos[i : i + CALIBRATION_BATCH]}
                              for i in range(0, len(photos), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def fit_detector_beside(model_path: str | Path, data_dir: str | Path, turn_away: float | None = None,
                        unsure_share: float | None = None, log=print) -> Path:
    """Fit the "neither" detector for a `.keras` model on a prepared dataset and write it beside the model.

    Features come from the served path (`Classifier.predict`, ONNX Runtime when a matching
    export exists), for the training and validation splits (the user's own cats and dogs, which
    set every threshold, out of fold). The ImageNet head (dogcat.detector) is used when the model's features still read
    ImageNet classes: the share of validation photos whose top class is among the frozen ImageNet
    network's top 5 is measured here (that network needs Keras and the ImageNet weights; without them
    the detector is distance alone, and says so).
    """
    from dogcat.config import PredictConfig
    from dogcat.data import read_split
    from dogcat.detector import (
        FEATURE_BLOCKS,
        MIN_IMAGENET_AGREEMENT,
        ImageNetHead,
        fit_detector,
    )
    from dogcat.inference import Classifier

    model_path = Path(model_path)
    turn_away = PredictConfig.turn_away if turn_away is None else turn_away
    unsure_share = max(PredictConfig.unsure_share, turn_away) if unsure_share is None else unsure_share
    classifier = Classifier.from_path(model_path)
    if not classifier.runner.has_features:
        raise ArtifactError(f"The model's runtime gives no pooled features (run `dogcat export {model_path}` again). "
                            f"Received: runtime={classifier.runtime!r}")
    features, labels, val_paths = {}, {}, []
    for split in ("train", "val"):
        data = read_split(data_dir, split)
        predictions = classifier.predict(data.paths, names=[str(p) for p in data.paths])
        read = [i for i, p in enumerate(predictions) if p.error is None]
        if not read:
            raise ArtifactError(f"None of the {split} photos could be read. Received: data_dir={str(data_dir)!r}")
        features[split] = np.stack([predictions[i].features for i in read])
        labels[split] = np.asarray(data.labels)[read]
        if split == "val":
            val_paths = [data.paths[i] for i in read]
    head_path, head, agreement = ModelFolder(model_path).imagenet_head, None, None
    if head_path is None:
        log("detector: no imagenet_head.npz shipped or beside the model: 'neither' on feature distance alone")
    else:
        head = ImageNetHead.load(head_path)
        reference = _frozen_imagenet_features(val_paths, classifier.image_size, log)
        if reference is not None:  # the model's top class among the frozen network's top 5 (breeds blur at top 1)
            top5 = np.argsort(-head.logits(reference), axis=1)[:, :5]
            agreement = float(np.mean((top5 == head.logits(features["val"]).argmax(axis=1)[:, None]).any(axis=1)))
    detector = fit_detector(features["train"], labels["train"], features["val"], labels["val"], file_sha256(model_path),
                            FEATURE_BLOCKS, turn_away, unsure_share, head, agreement)
    path = ModelFolder(model_path).detector
    detector.save(path)
    imagenet = ("not measured, head not used" if agreement is None else
                f"top class in the frozen network's top 5 on {agreement:.1%} of val, "
                + ("head used" if detector.head else f"head not used (under {MIN_IMAGENET_AGREEMENT:.0%})"))
    log(f"detector: {path} ({len(features['train'])} training and {len(features['val'])} validation photos, "
        f"{detector.info['out_of_fold_far']:.1%} of them far out of fold; ImageNet: {imagenet})")
    return path


def _frozen_imagenet_features(paths: list[Path], image_size: int, log) -> np.ndarray | None:
    """The pooled features of MobileNetV2 as ImageNet trained it (no fine-tuning), for `paths`;
    None, with a log line, where Keras or the ImageNet weights are not at hand."""
    from dogcat.preprocessing import decode_sources, to_model_input

    try:
        import keras

        from dogcat.model import imagenet_weights_path

        weights = imagenet_weights_path()
    except (ImportError, ArtifactError) as error:
        log(f"detector: cannot measure how well the model's features read ImageNet classes ({str(error).splitlines()[0]}); "
            "'neither' on feature distance alone")
        return None
    decoded = [item for item in decode_sources(paths, [str(p) for p in paths], image_size) if not isinstance(item, str)]
    if len(decoded) != len(paths):
        return None  # read a moment ago; a file that changed since makes the comparison meaningless
    network = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), include_top=False,
                                             weights=weights, pooling="avg")
    images = to_model_input(np.stack([image for image, _ in decoded])) * 2 - 1  # MobileNetV2's [-1, 1]
    return np.asarray(network.predict(images, batch_size=32, verbose=0))
