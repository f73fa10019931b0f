"""dogcat's networks as ONNX graphs, written layer by layer from the Keras layers' own weights.

One writer serves two jobs. `dogcat export` writes the whole classifier for serving, with
the probabilities, the pooled features that the "neither" detector reads
(dogcat.detector.FEATURE_BLOCKS), and what Grad-CAM needs (dogcat.explain): the base's feature map
and the logits' gradient with respect to the pooled features, computed in the graph from the
head's weights because ONNX Runtime alone cannot read them back. Callers ask for those two
outputs only when explaining, so plain predictions do not transfer them. Fast training writes
the frozen trunk, so caching its activations runs on ONNX Runtime, several times faster than a
Keras `predict` on a CPU (benchmarks/training.py).
Because the graph is built here from weights and settings, it needs only the `onnx` package: no
TensorFlow, no tf2onnx, and it is the same on every Keras backend. Only the layer types dogcat's
MobileNetV2 classifier uses are translated; anything else is refused by name. Tests hold both
graphs to the Keras model on random and real weights.
"""

from __future__ import annotations

import keras
import numpy as np

from dogcat.errors import DogcatError
from dogcat.explain import FEATURE_MAP, LOGIT_GRADIENTS
from dogcat.model import BASE_NAME, HEAD_LAYERS

OPSET = 17
PROBABILITIES = "probabilities"  # (N, classes): the classifier's softmax output
FEATURES = "features"  # (N, width): the detector's input, dogcat.detector.FEATURE_BLOCKS side by side


class UnsupportedLayer(DogcatError, ValueError):
    pass


def trunk_to_onnx(model: keras.Model, cut: keras.KerasTensor) -> bytes:
    """Serialized ONNX model: float32 NHWC images in [0, 1] -> the base's tensor `cut`, NHWC,
    as output "activations". The augmentation layers are left out, as at inference."""
    from onnx import helper

    graph, x = _start(model)
    activations = _translate_base(graph, model, x, stop_at=cut)[id(cut)]
    output = graph.node("Transpose", [activations], perm=[0, 2, 3, 1], name="activations")
    outputs = [helper.make_tensor_value_info(output, _FLOAT, ["N", *cut.shape[1:]])]
    return _finish(graph, model, "dogcat_trunk", outputs).SerializeToString()


def classifier_to_onnx(model: keras.Model):
    """The whole classifier as an onnx.ModelProto: images in [0, 1] -> PROBABILITIES, FEATURES,
    FEATURE_MAP and LOGIT_GRADIENTS.

    The head is dogcat's (dogcat.model.HEAD_LAYERS): global average pooling, Dense + ReLU,
    Dropout (an identity at inference) and Dense + softmax. FEATURES is the pooling's output and
    the pooled outputs of the base layers that dogcat.detector.FEATURE_BLOCKS names, side by side.
    LOGIT_GRADIENTS is dogcat.explain.logit_gradients, written with the head's own Gemm weights.
    """
    from onnx import helper

    from dogcat.detector import FEATURE_BLOCKS

    base = model.get_layer(BASE_NAME)
    graph, x = _start(model)
    names = _translate_base(graph, model, x, stop_at=None)
    x = names[id(base.output)]
    graph.node("Transpose", [x], perm=[0, 2, 3, 1], name=FEATURE_MAP)
    outputs, dense = {}, []
    for name in HEAD_LAYERS:
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            x = outputs[FEATURES] = graph.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
        elif isinstance(layer, keras.layers.Dropout):
            continue
        elif isinstance(layer, keras.layers.Dense):
            x, pre_activation, kernel = _dense(graph, layer, x, name=PROBABILITIES if name == HEAD_LAYERS[-1] else None)
            dense.append((layer, pre_activation, kernel))
        else:
            raise UnsupportedLayer(f"No ONNX translation for {type(layer).__name__} in the head. Received: layer={name}")
    if FEATURES not in outputs or x != PROBABILITIES or len(dense) != 2 or dense[0][0].activation.__name__ != "relu":
        raise UnsupportedLayer(f"Expected pooling, Dense + ReLU and a final Dense in the head. Received: head={HEAD_LAYERS}")
    # relu'(z) as 0/1, then W1 . diag(relu'(z)) . W2 as (N, K, classes): dogcat.explain.logit_gradients.
    (_, pre_activation, dense_kernel), (_, _, logits_kernel) = dense
    active = graph.node("Cast", [graph.node("Greater", [pre_activation, graph.const(np.float32(0))])], to=_FLOAT)
    active = graph.node("Unsqueeze", [active, graph.const(np.array([2], np.int64))])  # (N, units, 1)
    graph.node("MatMul", [dense_kernel, graph.node("Mul", [active, logits_kernel])], name=LOGIT_GRADIENTS)
    blocks = [
        outputs[FEATURES] if name == HEAD_LAYERS[0]
        else graph.node("ReduceMean", [names[id(base.get_layer(name).output)]], axes=[2, 3], keepdims=0)
        for name, _ in FEATURE_BLOCKS
    ]
    graph.node("Concat", blocks, name=FEATURES, axis=1)
    classes = model.output_shape[-1]
    _, height, width, channels = base.output.shape
    shapes = {
        PROBABILITIES: ["N", classes], FEATURES: ["N", sum(width for _, width in FEATURE_BLOCKS)],
        FEATURE_MAP: ["N", height, width, channels], LOGIT_GRADIENTS: ["N", channels, classes],
    }
    values = [helper.make_tensor_value_info(name, _FLOAT, shape) for name, shape in shapes.items()]
    return _finish(graph, model, "dogcat_classifier", values)


_FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx at module import


def _start(model: keras.Model):
    """A graph builder and its NCHW input in MobileNetV2's [-1, 1] range."""
    from onnx import numpy_helper

    graph = _GraphBuilder(numpy_helper)
    rescale = model.get_layer("to_mobilenet_range")
    x = graph.node("Mul", ["image", graph.const(np.float32(rescale.scale))])
    x = graph.node("Add", [x, graph.const(np.float32(rescale.offset))])
    return graph, graph.node("Transpose", [x], perm=[0, 3, 1, 2])  # NHWC -> NCHW, ONNX's convolution layout


def _translate_base(graph: _GraphBuilder, model: keras.Model, x: str, stop_at) -> dict[int, str]:
    """Translate the base up to the tensor `stop_at` (its output when None).

    Returns the graph name of every tensor translated, keyed by id() of its Keras tensor.
    """
    base = model.get_layer(BASE_NAME)
    stop_at = base.output if stop_at is None else stop_at
    names = {id(base.input): x}
    for layer in base.layers[1:]:
        inputs = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
        names[id(layer.output)] = _translate(graph, layer, [names[id(t)] for t in inputs], inputs[0].shape)
        if layer.output is stop_at:
            return names
    raise UnsupportedLayer(f"The cut tensor is not an output of {BASE_NAME}. Received: cut={stop_at}")


def _dense(graph: _GraphBuilder, layer, x: str, name: str | None) -> tuple[str, str, str]:
    """(output, pre-activation, kernel initializer): Grad-CAM's gradient reuses the last two."""
    activation = layer.activation.__name__
    if activation not in ("linear", "relu", "softmax"):
        raise UnsupportedLayer(f"Only linear, relu and softmax Dense layers. Received: layer={layer.name}")
    kernel = graph.const(keras.ops.convert_to_numpy(layer.kernel))
    inputs = [x, kernel]
    if layer.use_bias:
        inputs.append(graph.const(keras.ops.convert_to_numpy(layer.bias)))
    x = pre_activation = graph.node("Gemm", inputs, name=None if activation != "linear" else name)
    if activation == "relu":
        x = graph.node("Relu", [x], name=name)
    elif activation == "softmax":
        x = graph.node("Softmax", [x], name=name, axis=-1)
    return x, pre_activation, kernel


def _finish(graph: _GraphBuilder, model: keras.Model, title: str, outputs):
    import onnx
    from onnx import helper

    size = model.input_shape[1]
    onnx_graph = helper.make_graph(
        graph.nodes, title, [helper.make_tensor_value_info("image", _FLOAT, ["N", size, size, 3])],
        outputs, graph.initializers,
    )
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dogcat")
    proto.ir_version = 8  # readable by every onnxruntime dogcat supports
    onnx.checker.check_model(proto)
    return proto


def onnx_trunk_runner(model: keras.Model, cut: keras.KerasTensor):
    """A function images -> activations on ONNX Runtime, or None when a layer has no translation."""
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        serialized = trunk_to_onnx(model, cut)
    except (UnsupportedLayer, ImportError):
        return None
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]


class _GraphBuilder:
    def __init__(self, numpy_helper):
        self.nodes, self.initializers, self._numpy_helper, self._count = [], [], numpy_helper, 0

    def const(self, array: np.ndarray) -> str:
        """An initializer: float32, except int64 arrays (ONNX's axes and shapes) stay int64."""
        self._count += 1
        name = f"const_{self._count}"
        array = np.asarray(array)
        array = array if array.dtype == np.int64 else array.astype(np.float32)
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, **attributes) -> str:
        from onnx import helper

        self._count += 1
        output = name or f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"node_{self._count}", **attributes))
        return output


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding: the odd pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(graph: _GraphBuilder, layer, x: str, shape, weight: np.ndarray, group: int) -> str:
    kernel_h, kernel_w = layer.kernel_size
    stride_h, stride_w = layer.strides
    if tuple(layer.dilation_rate) != (1, 1) or layer.activation.__name__ != "linear":
        raise UnsupportedLayer(f"Only undilated convolutions without activation. Received: layer={layer.name}")
    if layer.padding == "same":
        top, bottom = _same_pads(shape[1], kernel_h, stride_h)
        left, right = _same_pads(shape[2], kernel_w, stride_w)
    else:
        top = bottom = left = right = 0
    inputs = [x, graph.const(weight)]
    if layer.use_bias:
        inputs.append(graph.const(keras.ops.convert_to_numpy(layer.bias)))
    return graph.node(
        "Conv", inputs, kernel_shape=[kernel_h, kernel_w], strides=[stride_h, stride_w],
        pads=[top, left, bottom, right], group=group,
    )


def _translate(graph: _GraphBuilder, layer, inputs: list[str], shape) -> str:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer(f"Only channels_last layers. Received: layer={layer.name}")
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = keras.ops.convert_to_numpy(layer.kernel)  # (h, w, in, multiplier)
        h, w, channels, multiplier = kernel.shape
        weight = kernel.reshape(h, w, channels * multiplier).transpose(2, 0, 1)[:, None]
        return _conv(graph, layer, inputs[0], shape, weight, group=channels)
    if isinstance(layer, keras.layers.Conv2D):
        if layer.groups != 1:
            raise UnsupportedLayer(f"Only ungrouped Conv2D. Received: layer={layer.name}")
        weight = keras.ops.convert_to_numpy(layer.kernel).transpose(3, 2, 0, 1)  # (out, in, h, w)
        return _conv(graph, layer, inputs[0], shape, weight, group=1)
    if isinstance(layer, keras.layers.BatchNormalization):
        if layer.axis not in (-1, len(shape) - 1):
            raise UnsupportedLayer(f"Only channel-axis BatchNormalization. Received: layer={layer.name}")
        channels = shape[-1]
        gamma = keras.ops.convert_to_numpy(layer.gamma) if layer.scale else np.ones(channels, np.float32)
        beta = keras.ops.convert_to_numpy(layer.beta) if layer.center else np.zeros(channels, np.float32)
        moments = [keras.ops.convert_to_numpy(v) for v in (layer.moving_mean, layer.moving_variance)]
        parameters = [gamma, beta, *moments]
        return graph.node(
            "BatchNormalization", [inputs[0], *map(graph.const, parameters)], epsilon=float(layer.epsilon)
        )
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            raise UnsupportedLayer(f"Only plain (capped) ReLU. Received: layer={layer.name}")
        cap = np.float32(np.inf if layer.max_value is None else layer.max_value)
        return graph.node("Clip", [inputs[0], graph.const(np.float32(0)), graph.const(cap)])
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        pads = np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        graph.initializers.append(graph._numpy_helper.from_array(pads, f"pads_{layer.name}"))
        return graph.node("Pad", [inputs[0], f"pads_{layer.name}"])
    if isinstance(layer, keras.layers.Add):
        output = inputs[0]
        for other in inputs[1:]:
            output = graph.node("Add", [output, other])
        return output
    raise UnsupportedLayer(f"No ONNX translation for {type(layer).__name__}. Received: layer={layer.name}")
