"""Derive dogcat's ImageNet head from MobileNetV2's 8-bit ImageNet classifier (TFLite, Apache 2.0).

    pip install tflite   # a pure-Python reader of the .tflite flatbuffer; no TensorFlow needed
    python tools/derive_imagenet_head.py ../shared/weights/mobilenet_v2_1.0_224_quant.tflite \
        ../shared/weights/imagenet_labels.txt models/imagenet_head.npz

The no-top MobileNetV2 that dogcat fine-tunes lost its ImageNet classifier, the 1x1 convolution
`MobilenetV2/Logits/Conv2d_1c_1x1` (1280 pooled features -> 1,001 classes, the first being
"background"). The quantized model from TensorFlow's hosted models keeps it: uint8 weights with
one scale and zero point, int32 biases with one scale. This script copies those tensors as they are
(no re-quantization, so nothing is lost twice) into an `.npz` that `dogcat.detector.ImageNetHead`
loads with allow_pickle=False, with the class names made readable ("Siamese cat, Siamese" ->
"Siamese cat"; "tabby, tabby cat" -> "tabby cat") and the provenance in a JSON header.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

WEIGHTS = "MobilenetV2/Logits/Conv2d_1c_1x1/Conv2D;MobilenetV2/Logits/Conv2d_1c_1x1/weights_quant/FakeQuantWithMinMaxVars"
BIASES = "MobilenetV2/Logits/Conv2d_1c_1x1/BiasAdd;MobilenetV2/Logits/Conv2d_1c_1x1/Conv2D;MobilenetV2/Logits/Conv2d_1c_1x1/biases"
SOURCE = {
    "model": "mobilenet_v2_1.0_224_quant.tflite (TensorFlow hosted models, as committed in google-coral/test_data "
             "104342d2d3480b3e66203073dac24f4e2dbb4c41)",
    "license": "Apache License 2.0",
    "tensors": [WEIGHTS, BIASES],
}


def readable(line: str) -> str:
    """The first WordNet synonym, with "cat" or "dog" added where another synonym does so."""
    synonyms = [s.strip() for s in line.split(",")]
    first = synonyms[0]
    for animal in ("cat", "dog"):
        if f"{first} {animal}" in synonyms:
            return f"{first} {animal}"
    return first


def read_tensor(model, graph, name: str):
    buffers = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        buffers[tensor.Name().decode()] = tensor
    tensor = buffers[name]
    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    quantization = tensor.Quantization()
    return tensor, data, float(quantization.ScaleAsNumpy()[0]), int(quantization.ZeroPointAsNumpy()[0])


def main() -> None:
    import tflite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    raw = args.tflite.read_bytes()
    model = tflite.Model.GetRootAsModel(raw, 0)
    graph = model.Subgraphs(0)
    weights, weight_bytes, weight_scale, weight_zero = read_tensor(model, graph, WEIGHTS)
    _, bias_bytes, bias_scale, bias_zero = read_tensor(model, graph, BIASES)
    kernel = np.frombuffer(weight_bytes.tobytes(), np.uint8).reshape(tuple(weights.ShapeAsNumpy())).reshape(1001, 1280)
    bias = np.frombuffer(bias_bytes.tobytes(), np.int32).reshape(1001)
    lines = args.labels.read_text().splitlines()
    if bias_zero != 0 or len(lines) != 1001 or lines[0] != "background":
        raise SystemExit(f"unexpected inputs: bias zero point {bias_zero}, {len(lines)} label lines (want 0 and 1,001)")
    header = {
        "format": 1, **SOURCE,
        "tflite_sha256": hashlib.sha256(raw).hexdigest(),
        "labels_sha256": hashlib.sha256(args.labels.read_bytes()).hexdigest(),
        "kernel_scale": weight_scale, "kernel_zero_point": weight_zero, "bias_scale": bias_scale,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as handle:
        np.savez_compressed(handle, header=np.array(json.dumps(header)), kernel=kernel, bias=bias,
                            names=np.array([readable(line) for line in lines]),
                            synonyms=np.array(lines))
    print(f"{args.out}: {kernel.shape[0]} classes x {kernel.shape[1]} features, {args.out.stat().st_size / 1e6:.2f} MB, "
          f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
