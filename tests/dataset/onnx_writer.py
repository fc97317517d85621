"""A tiny WD14-shaped tagger written as a real ONNX file, by hand: the `onnx` package needs a newer protobuf than
the WebUI's 3.20.0, so the few protobuf messages needed are encoded here directly (wire format, ONNX IR 8).

The model: input [N, S, S, 3] float32 BGR 0-255 -> mean colour per channel -> linear -> sigmoid -> [N, tags].
"""

from __future__ import annotations

import numpy as np


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype="<f4")
    return b"".join(_int(1, d) for d in array.shape) + _int(2, 1) + _str(8, name) + _bytes(9, array.tobytes())


def _value_info(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _str(2, d)) for d in dims)
    tensor_type = _int(1, 1) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], attributes: bytes = b"") -> bytes:
    return b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs) + _str(4, op) + attributes


def write_tagger_onnx(path, size: int, weights: np.ndarray, bias: np.ndarray) -> None:
    """weights [3, tags] act on the mean B, G, R values scaled to 0-1."""
    axes = _str(1, "axes") + b"".join(_int(8, a) for a in (1, 2)) + _int(20, 7)
    keepdims = _str(1, "keepdims") + _int(3, 0) + _int(20, 2)
    nodes = [
        _node("ReduceMean", ["input_1"], ["mean"], _bytes(5, axes) + _bytes(5, keepdims)),
        _node("MatMul", ["mean", "w"], ["logits0"]),
        _node("Add", ["logits0", "b"], ["logits"]),
        _node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _str(2, "tiny_wd14")
        + _bytes(5, _tensor("w", weights / 255.0))
        + _bytes(5, _tensor("b", bias))
        + _bytes(11, _value_info("input_1", ["batch", size, size, 3]))
        + _bytes(12, _value_info("predictions_sigmoid", ["batch", int(weights.shape[1])]))
    )
    model = _int(1, 8) + _str(2, "sdtrain-tests") + _bytes(7, graph) + _bytes(8, _str(1, "") + _int(2, 13))
    with open(path, "wb") as f:
        f.write(model)
