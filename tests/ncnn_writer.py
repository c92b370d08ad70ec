"""Writes small Real-ESRGAN graphs in ncnn's param/bin format, for round-trip tests of the ncnn importer.

Graphs are described with named blobs; a blob read by several layers gets the Split layer ncnn requires.
Convolution weights are stored as float16 behind ncnn's tag, biases and PReLU slopes as float32.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

FP16_TAG = 0x01306B47


class Graph:
    def __init__(self) -> None:
        self.layers: list[tuple[str, list[str], list[str], str]] = []  # type, inputs, outputs, params
        self.weights = b""
        self.count = 0

    def add(self, kind: str, inputs: list[str], params: str = "") -> str:
        self.count += 1
        out = f"b{self.count}"
        self.layers.append((kind, inputs, [out], params))
        return out

    def conv(self, blob: str, weight: torch.Tensor, bias: torch.Tensor, leaky: float | None = None) -> str:
        w, b = weight.numpy(), bias.numpy()
        params = f"0={w.shape[0]} 1=3 4=1 5=1 6={w.size}"
        if leaky is not None:
            params += f" 9=2 -23310=1,{leaky:e}"
        self.weights += struct.pack("<I", FP16_TAG) + w.astype("<f2").tobytes() + b"\0" * (-(w.size * 2) % 4)
        self.weights += b.astype("<f4").tobytes()
        return self.add("Convolution", [blob], params)

    def prelu(self, blob: str, slope: torch.Tensor) -> str:
        self.weights += slope.numpy().astype("<f4").tobytes()
        return self.add("PReLU", [blob], f"0={slope.numel()}")

    def write(self, param: Path, output: str) -> Path:
        uses: dict[str, int] = {}
        for _kind, inputs, _outputs, _params in self.layers:
            for blob in inputs:
                uses[blob] = uses.get(blob, 0) + 1
        taken: dict[str, int] = {}
        lines = ["Input input 0 1 data"]
        if uses.get("data", 0) > 1:
            n = uses["data"]
            lines.append(f"Split split_data 1 {n} data " + " ".join(f"data_{i}" for i in range(n)))
        for index, (kind, inputs, outputs, params) in enumerate(self.layers):
            renamed = []
            for blob in inputs:
                if uses[blob] > 1:
                    renamed.append(f"{blob}_{taken.get(blob, 0)}")
                    taken[blob] = taken.get(blob, 0) + 1
                else:
                    renamed.append(blob)
            outs = ["output" if o == output else o for o in outputs]
            lines.append(f"{kind} l{index} {len(renamed)} {len(outs)} {' '.join(renamed)} {' '.join(outs)} {params}")
            for o in outputs:
                if uses.get(o, 0) > 1:
                    lines.append(f"Split split_{o} 1 {uses[o]} {o} " + " ".join(f"{o}_{i}" for i in range(uses[o])))
        blobs = {b for line in lines for b in line.split()[4:] if "=" not in b}
        param.write_text(f"7767517\n{len(lines)} {len(blobs)}\n" + "\n".join(lines) + "\n")
        param.with_suffix(".bin").write_bytes(self.weights)
        return param


def rrdb_state(num_block: int, num_up: int, nf: int = 16, gc: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random RRDBNet weights in the Real-ESRGAN checkpoint layout, rounded to float16 as ncnn stores them."""
    rng = torch.Generator().manual_seed(seed)

    def conv(cout: int, cin: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(cout, cin, 3, 3, generator=rng) * 0.1).half().float(), torch.randn(cout, generator=rng) * 0.01

    state: dict[str, torch.Tensor] = {}

    def put(name: str, cout: int, cin: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = conv(cout, cin)

    put("conv_first", nf, 3)
    for b in range(num_block):
        for r in range(1, 4):
            for c in range(1, 5):
                put(f"body.{b}.rdb{r}.conv{c}", gc, nf + (c - 1) * gc)
            put(f"body.{b}.rdb{r}.conv5", nf, nf + 4 * gc)
    put("conv_body", nf, nf)
    for u in range(num_up):
        put(f"conv_up{u + 1}", nf, nf)
    put("conv_hr", nf, nf)
    put("conv_last", 3, nf)
    return state


def write_rrdb(state: dict[str, torch.Tensor], num_block: int, num_up: int, param: Path) -> Path:
    """The RRDBNet graph as Real-ESRGAN's exports lay it out: dense blocks with 0.2-scaled residuals."""
    g = Graph()

    def c(blob: str, name: str, leaky: float | None = None) -> str:
        return g.conv(blob, state[f"{name}.weight"], state[f"{name}.bias"], leaky)

    first = c("data", "conv_first")
    x = first
    for b in range(num_block):
        block_in = x
        for r in range(1, 4):
            rdb_in, feats = x, [x]
            for k in range(1, 5):
                cat = feats[0] if len(feats) == 1 else g.add("Concat", list(feats))
                feats.append(c(cat, f"body.{b}.rdb{r}.conv{k}", 0.2))
            c5 = c(g.add("Concat", list(feats)), f"body.{b}.rdb{r}.conv5")
            x = g.add("Eltwise", [c5, rdb_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
        x = g.add("Eltwise", [x, block_in], "0=1 -23301=2,2.000000e-01,1.000000e+00")
    x = g.add("BinaryOp", [first, c(x, "conv_body")], "0=0")
    for u in range(num_up):
        x = c(g.add("Interp", [x], "0=1 1=2.000000e+00 2=2.000000e+00"), f"conv_up{u + 1}", 0.2)
    out = c(c(x, "conv_hr", 0.2), "conv_last")
    return g.write(param, out)


def write_compact(state: dict[str, torch.Tensor], scale: int, param: Path) -> Path:
    """An SRVGGNetCompact graph: conv/PReLU pairs, pixel shuffle, plus the nearest-upsampled input."""
    g = Graph()
    blob = "data"
    convs = sorted({int(k.split(".")[1]) for k in state if k.endswith(".bias")})
    for conv in convs:
        blob = g.conv(blob, state[f"body.{conv}.weight"], state[f"body.{conv}.bias"])
        if f"body.{conv + 1}.weight" in state:
            blob = g.prelu(blob, state[f"body.{conv + 1}.weight"])
    shuffled = g.add("PixelShuffle", [blob], f"0={scale}")
    base = g.add("Interp", ["data"], f"0=1 1={scale}.0 2={scale}.0")
    return g.write(param, g.add("BinaryOp", [shuffled, base], "0=0"))
