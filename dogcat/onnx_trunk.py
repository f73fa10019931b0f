"""The frozen trunk as an ONNX graph, so caching its activations runs on ONNX Runtime.

Caching is the one part of fast training that runs the big, frozen part of MobileNetV2 over
every view of every image, and on a CPU ONNX Runtime runs it several times faster than a
Keras `predict` (benchmarks/training.py). The graph is written here, layer by layer from the
Keras layers' own weights and settings, so it needs only the `onnx` package: no TensorFlow, no
tf2onnx, and it works the same on every Keras backend. Only the layer types MobileNetV2 uses
are translated; anything else is refused, and `split_model`'s Keras trunk is used instead.
Tests hold the ONNX trunk to the Keras one on random and real weights.
"""

from __future__ import annotations

import keras
import numpy as np

from dogcat.model import BASE_NAME

OPSET = 17


class UnsupportedLayer(ValueError):
    pass


def trunk_to_onnx(model: keras.Model, cut: keras.KerasTensor) -> bytes:
    """Serialized ONNX model: float32 NHWC images in [0, 1] -> the base's tensor `cut`, NHWC.

    `model` is a dogcat classifier (see dogcat.model.build_model); the augmentation layers are
    left out, as at inference.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = _GraphBuilder(numpy_helper)
    size = model.input_shape[1]
    rescale = model.get_layer("to_mobilenet_range")
    x = graph.node("Mul", ["image", graph.const(np.float32(rescale.scale))])
    x = graph.node("Add", [x, graph.const(np.float32(rescale.offset))])
    x = graph.node("Transpose", [x], perm=[0, 3, 1, 2])  # NHWC -> NCHW, ONNX's convolution layout

    base = model.get_layer(BASE_NAME)
    names = {id(base.input): x}
    for layer in base.layers[1:]:
        inputs = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
        output = _translate(graph, layer, [names[id(t)] for t in inputs], inputs[0].shape)
        names[id(layer.output)] = output
        if layer.output is cut:
            break
    else:
        raise UnsupportedLayer(f"The cut tensor is not an output of {BASE_NAME}. Received: cut={cut}")
    output = graph.node("Transpose", [names[id(cut)]], perm=[0, 2, 3, 1], name="activations")

    channels_last = ["N", *cut.shape[1:]]
    onnx_graph = helper.make_graph(
        graph.nodes, "dogcat_trunk",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, channels_last)],
        graph.initializers,
    )
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dogcat")
    proto.ir_version = 8  # readable by every onnxruntime dogcat supports
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


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
        self._count += 1
        name = f"const_{self._count}"
        self.initializers.append(self._numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
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
