"""A tiny WD14-shaped tagger written as a real ONNX file, by hand: the `onnx` package needs a newer protobuf than
the WebUI's 3.20.0, so the few protobuf messages needed are encoded here directly (wire format, ONNX IR 8).

The model: input [N, S, S, 3] float32 BGR 0-255 -> mean colour per channel -> linear -> sigmoid -> [N, tags].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# name, WD14 category (0 general, 4 character, 9 rating), weights on the mean (B, G, R) in 0-1, bias
TagSpec = tuple[str, int, tuple[float, float, float], float]

# For the demo images (lib_sdtrain.demo.dataset): the first tags hold for every image; grass, night and sunset
# follow the scene's colours (weights fitted to the scenes as the tagger sees them, padded white to a square).
DEMO_TAGS: list[TagSpec] = [
    ("general", 9, (0, 0, 0), 2.0),
    ("sensitive", 9, (0, 0, 0), -2.0),
    ("questionable", 9, (0, 0, 0), -3.0),
    ("explicit", 9, (0, 0, 0), -4.0),
    ("solo", 0, (0, 0, 0), 3.0),
    ("no_humans", 0, (0, 0, 0), 3.0),
    ("creature", 0, (0, 0, 0), 2.5),
    ("full_body", 0, (0, 0, 0), 1.5),
    ("looking_at_viewer", 0, (0, 0, 0), 1.0),
    ("grass", 0, (-10.8, 54.0, -49.4), 0.2),
    ("night", 0, (3.0, -18.6, -45.8), 26.8),
    ("sunset", 0, (-34.2, -25.2, 51.4), -3.0),
]
DEMO_ALWAYS_TAGS = ["solo", "no_humans", "creature", "full_body", "looking_at_viewer"]
TAGGER_SIZE = 32


def write_tiny_tagger(folder: str | Path, tags: Sequence[TagSpec] = DEMO_TAGS, size: int = TAGGER_SIZE) -> Path:
    """A WD14 tagger folder as kohya and SD-Train read it: model.onnx and selected_tags.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([t[2] for t in tags], dtype=np.float32).T
    write_tagger_onnx(folder / "model.onnx", size, weights, np.array([t[3] for t in tags], dtype=np.float32))
    rows = ["tag_id,name,category,count"] + [f"{i},{tag[0]},{tag[1]},100" for i, tag in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


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


def write_tagger_onnx(path: str | Path, size: int, weights: np.ndarray, bias: np.ndarray) -> None:
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
