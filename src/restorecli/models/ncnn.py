"""Import Real-ESRGAN models published in ncnn form (NAME.param + NAME.bin) as PyTorch state dicts.

The ncnn graph is read, its shape is recognised as RRDBNet (any block count and scale) or
SRVGGNetCompact, and the weights are laid out under the key names of the original PyTorch
checkpoints, so spandrel builds the matching network from them. Any other graph is refused.

File format facts used here (ncnn's own documentation, "param and model file structure"):
- .param: magic 7767517, "layer_count blob_count", then one line per layer:
  ``type name n_in n_out in_blobs... out_blobs... key=value...``; a key below -23300 marks an array
  parameter ``-(23300+k)=count,v1,v2,...``.
- .bin: the weights of each layer in layer order. A Convolution stores its weights behind a 4-byte
  tag (0x01306B47: float16, 0: float32, 0x000D4B38: int8) and its bias as raw float32.
  PReLU stores its slopes as raw float32. float16 blocks are padded to 4 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.backends.ncnn import NcnnGraph
from ..errors import UnsupportedModel

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_RAW = 0x0002C056

# Layers that carry no weights and that the two supported graphs are made of.
_WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle",
               "Reshape", "Permute", "Crop", "Noop"}


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        value = self.params.get(key, default)
        return int(value)  # type: ignore[arg-type]

    def float_param(self, key: int, default: float = 0.0) -> float:
        value = self.params.get(key, default)
        return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ConvertedModel:
    """A converted model: the state dict in the original checkpoint's layout, and what was recognised."""

    state_dict: dict[str, torch.Tensor]
    architecture: str  # "RRDBNet" or "SRVGGNetCompact"
    scale: int  # the network's own scale
    output_scale: float  # the scale of the whole graph (differs when the graph resizes its result)
    description: str


def _parse_value(text: str) -> object:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: Path) -> list[NcnnLayer]:
    """Read an ncnn text .param file into layers, in file order."""
    try:
        lines = path.read_text(encoding="ascii").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnsupportedModel(f"{path}: cannot read ncnn param file ({exc})") from None
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise UnsupportedModel(f"{path}: not an ncnn text param file (magic number {PARAM_MAGIC} missing)")
    try:
        layer_count = int(lines[1].split()[0])
        layers = []
        for line in lines[2 : 2 + layer_count]:
            parts = line.split()
            kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
            inputs = parts[4 : 4 + n_in]
            outputs = parts[4 + n_in : 4 + n_in + n_out]
            params: dict[int, object] = {}
            for item in parts[4 + n_in + n_out :]:
                key_text, value_text = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:
                    values = value_text.split(",")
                    params[-(key + 23300)] = [_parse_value(v) for v in values[1:]]
                else:
                    params[key] = _parse_value(value_text)
            layers.append(NcnnLayer(kind, name, inputs, outputs, params))
    except (IndexError, ValueError) as exc:
        raise UnsupportedModel(f"{path}: malformed ncnn param file ({exc})") from None
    if len(layers) != layer_count:
        raise UnsupportedModel(f"{path}: param file declares {layer_count} layers but holds {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.pos = 0
        self.path = path

    def _take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise UnsupportedModel(f"{self.path}: weights file ends early (truncated or does not match the param file)")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def raw_float32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self._take(4), "little")
        if tag == TAG_FP16:
            data = np.frombuffer(self._take(2 * count), dtype="<f2").astype(np.float32)
            if (2 * count) % 4:
                self._take(4 - (2 * count) % 4)
            return data
        if tag in (0, TAG_FP32_RAW):
            return self.raw_float32(count)
        if tag == TAG_INT8:
            raise UnsupportedModel(f"{self.path}: int8-quantised weights are not supported")
        # Otherwise the 4 bytes were the start of a 256-entry float table followed by uint8 indices.
        self.pos -= 4
        table = self.raw_float32(256)
        index = np.frombuffer(self._take(count), dtype=np.uint8)
        if count % 4:
            self._take(4 - count % 4)
        return table[index]


def read_weights(layers: list[NcnnLayer], bin_path: Path) -> None:
    """Attach each layer's weights from the .bin file; refuse layers whose weights this importer cannot place."""
    try:
        reader = _BinReader(bin_path.read_bytes(), bin_path)
    except OSError as exc:
        raise UnsupportedModel(f"{bin_path}: cannot read ncnn weights file ({exc})") from None
    for layer in layers:
        if layer.type == "Convolution":
            if layer.int_param(2, 1) != 1 or layer.int_param(3, 1) != 1 or layer.int_param(7, 1) != 1:
                raise UnsupportedModel(f"{bin_path}: layer {layer.name} is a strided, dilated or grouped convolution")
            out_ch, kernel = layer.int_param(0), layer.int_param(1)
            size = layer.int_param(6)
            in_ch = size // (out_ch * kernel * kernel)
            weight = reader.tagged(size).reshape(out_ch, in_ch, kernel, kernel)
            layer.weights["weight"] = weight
            if layer.int_param(5):
                layer.weights["bias"] = reader.raw_float32(out_ch)
        elif layer.type == "PReLU":
            layer.weights["weight"] = reader.raw_float32(layer.int_param(0, 1))
        elif layer.type not in _WEIGHTLESS:
            raise UnsupportedModel(
                f"{bin_path}: layer type {layer.type} ({layer.name}) is not part of an RRDBNet or SRVGGNetCompact graph"
            )
    if reader.pos != len(reader.data):
        raise UnsupportedModel(
            f"{bin_path}: {len(reader.data) - reader.pos} bytes left over after the last layer; "
            "the weights file does not match the param file"
        )


def _describe(layers: list[NcnnLayer]) -> str:
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _final_resize(layers: list[NcnnLayer], after: int) -> float:
    """The factor of a resize applied to the network's output at the very end of the graph (1.0 if none).

    Nearest-neighbour Interp layers are the networks' own upsampling (or Compact's skip path) and do not count.
    """
    factor = 1.0
    for layer in layers[after + 1 :]:
        if layer.type == "Interp" and layer.int_param(0) != 1:
            factor *= layer.float_param(1, 1.0)
    return factor


def _convert_rrdb(layers: list[NcnnLayer], convs: list[NcnnLayer]) -> ConvertedModel:
    nf = convs[0].int_param(0)
    in_total = convs[0].weights["weight"].shape[1]
    grow = convs[1].int_param(0)
    body = [c for c in convs[1:] if c.int_param(0) == grow]
    if len(body) % 12:
        raise UnsupportedModel(f"RRDBNet-like graph with {len(body)} growth convolutions, not a multiple of 12")
    num_block = len(body) // 12
    tail = convs[1 + 15 * num_block :]
    num_up = len(tail) - 3  # conv_body, conv_up*, conv_hr, conv_last
    upsamples = [layer for layer in layers if layer.type == "Interp" and layer.int_param(0) == 1]
    if num_up < 0 or len(upsamples) != num_up:
        raise UnsupportedModel(
            f"RRDBNet-like graph with {len(tail)} convolutions after the body and {len(upsamples)} upsampling layers"
        )
    out_ch = tail[-1].int_param(0)
    # Scales 1 and 2 fold the input with pixel-unshuffle by 4 and 2 before the first convolution.
    unshuffle = int(round((in_total / out_ch) ** 0.5))
    if unshuffle * unshuffle * out_ch != in_total:
        raise UnsupportedModel(f"RRDBNet-like graph with {in_total} input channels for {out_ch} output channels")
    scale_num = 2**num_up
    if scale_num % unshuffle:
        raise UnsupportedModel(f"RRDBNet-like graph with {num_up} upsamplings and pixel-unshuffle by {unshuffle}")
    scale = scale_num // unshuffle

    state: dict[str, torch.Tensor] = {}

    def put(prefix: str, conv: NcnnLayer) -> None:
        state[f"{prefix}.weight"] = _tensor(conv.weights["weight"])
        state[f"{prefix}.bias"] = _tensor(conv.weights["bias"])

    put("conv_first", convs[0])
    index = 1
    for block in range(num_block):
        for rdb in range(1, 4):
            for conv in range(1, 6):
                put(f"body.{block}.rdb{rdb}.conv{conv}", convs[index])
                index += 1
    put("conv_body", tail[0])
    for up in range(num_up):
        put(f"conv_up{up + 1}", tail[1 + up])
    put("conv_hr", tail[-2])
    put("conv_last", tail[-1])
    last_conv = layers.index(tail[-1])
    return ConvertedModel(
        state_dict=state,
        architecture="RRDBNet",
        scale=scale,
        output_scale=scale * _final_resize(layers, last_conv),
        description=f"RRDBNet, {num_block} blocks, {nf} features, x{scale}",
    )


def _convert_compact(layers: list[NcnnLayer], convs: list[NcnnLayer]) -> ConvertedModel:
    prelus = [layer for layer in layers if layer.type == "PReLU"]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if len(shuffles) != 1 or len(prelus) != len(convs) - 1:
        raise UnsupportedModel(
            f"SRVGGNetCompact-like graph with {len(convs)} convolutions, {len(prelus)} PReLU "
            f"and {len(shuffles)} PixelShuffle layers"
        )
    state: dict[str, torch.Tensor] = {}
    index = 0
    for conv, prelu in zip(convs[:-1], prelus):
        state[f"body.{index}.weight"] = _tensor(conv.weights["weight"])
        state[f"body.{index}.bias"] = _tensor(conv.weights["bias"])
        state[f"body.{index + 1}.weight"] = _tensor(prelu.weights["weight"])
        index += 2
    state[f"body.{index}.weight"] = _tensor(convs[-1].weights["weight"])
    state[f"body.{index}.bias"] = _tensor(convs[-1].weights["bias"])
    scale = shuffles[0].int_param(0)
    shuffle_at = layers.index(shuffles[0])
    return ConvertedModel(
        state_dict=state,
        architecture="SRVGGNetCompact",
        scale=scale,
        output_scale=scale * _final_resize(layers, shuffle_at + 1),
        description=f"SRVGGNetCompact, {len(convs) - 2} convolutions, x{scale}",
    )


def convert_ncnn(param_path: Path, bin_path: Path | None = None) -> ConvertedModel:
    """Convert an ncnn Real-ESRGAN model into a state dict in the original PyTorch layout.

    ``bin_path`` defaults to the param file with the ``.bin`` suffix. Raises ``UnsupportedModel``
    naming what was found when the graph is neither RRDBNet nor SRVGGNetCompact.
    """
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path else param_path.with_suffix(".bin")
    layers = parse_param(param_path)
    read_weights(layers, bin_path)
    convs = [layer for layer in layers if layer.type == "Convolution"]
    if not convs:
        raise UnsupportedModel(f"{param_path}: no convolution layers ({_describe(layers)})")
    for conv in convs:
        if conv.int_param(1) != 3 or "bias" not in conv.weights:
            raise UnsupportedModel(
                f"{param_path}: convolution {conv.name} has kernel {conv.int_param(1)} or no bias; "
                f"not a Real-ESRGAN graph ({_describe(layers)})"
            )
    kinds = {layer.type for layer in layers}
    try:
        if "PReLU" in kinds and "PixelShuffle" in kinds and "Concat" not in kinds:
            return _convert_compact(layers, convs)
        if "Concat" in kinds and "Eltwise" in kinds and "PReLU" not in kinds:
            return _convert_rrdb(layers, convs)
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{param_path}: {exc}") from None
    raise UnsupportedModel(
        f"{param_path}: graph is neither RRDBNet nor SRVGGNetCompact; found {_describe(layers)}"
    )


def native_graph(param_path: Path, bin_path: Path | None = None) -> NcnnGraph:
    """The ncnn model at ``param_path`` as the ncnn back-end runs it, natively: its one input blob, and the
    network's own output, before any final resize the published graph adds (the x2/x3 anime-video models resize
    their 4x result; restorecli's final resize does that, as for the converted weights). Raises
    ``UnsupportedModel`` for a graph without one input."""
    param_path = Path(param_path)
    bin_path = Path(bin_path) if bin_path else param_path.with_suffix(".bin")
    layers = parse_param(param_path)
    inputs = [layer for layer in layers if layer.type == "Input"]
    if len(inputs) != 1 or not layers[-1].outputs:
        raise UnsupportedModel(f"{param_path}: an ncnn graph with {len(inputs)} inputs; one is needed")
    makers = {blob: layer for layer in layers for blob in layer.outputs}
    output = layers[-1].outputs[0]
    while (maker := makers.get(output)) is not None and maker.type == "Interp" and maker.int_param(0) != 1:
        output = maker.inputs[0]  # a final (non-nearest) resize: the network's output is what it resizes
    return NcnnGraph(param_path, bin_path, inputs[0].outputs[0], output)
