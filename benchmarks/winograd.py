"""Does a Winograd F(4x4, 3x3) convolution written in eager PyTorch beat oneDNN's direct one on the CPU?

A record of a measured option that was not taken (docs/performance.md): on x4plus's layer shapes at 128 px
it was 1.7-5x slower, because its tile transforms move more memory than the direct convolution takes time.
Prints each shape's times and the largest difference from the direct result.

    python benchmarks/winograd.py [--threads 2] [--size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float32)
G = torch.tensor([[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]])
AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=torch.float32)

def prep(w):  # (K, C, 3, 3) -> (36, C, K)
    u = G @ w @ G.T  # K, C, 6, 6
    return u.permute(2, 3, 1, 0).reshape(36, w.shape[1], w.shape[0]).contiguous()

def wconv(x, U, bias):
    n, c, h, w = x.shape
    th, tw = -(-h // 4), -(-w // 4)
    xp = torch.nn.functional.pad(x, (1, tw * 4 + 1 - w, 1, th * 4 + 1 - h))
    d = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # n c th tw 6 6
    d = d.permute(4, 5, 0, 2, 3, 1)  # 6 6 n th tw c
    v = torch.tensordot(BT, d, dims=([1], [0]))  # 6(i) 6 n th tw c
    v = torch.tensordot(BT, v, dims=([1], [1]))  # 6(j) 6(i) ...
    v = v.transpose(0, 1).reshape(36, n * th * tw, c)
    m = torch.bmm(v, U).reshape(6, 6, n, th, tw, -1)  # 6 6 n th tw k
    y = torch.tensordot(AT, m, dims=([1], [0]))  # 4 6 n th tw k
    y = torch.tensordot(AT, y, dims=([1], [1]))  # 4(j) 4(i) n th tw k
    y = y.permute(2, 5, 3, 1, 4, 0).reshape(n, -1, th * 4, tw * 4)[:, :, :h, :w]
    return y + bias.view(1, -1, 1, 1)

def best(f, n=5):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)


def compare(c: int, k: int, size: int, repeats: int) -> str:
    """One layer shape, C channels in and K out on a size x size input: both convolutions' best times and how far
    Winograd's result is from the direct one."""
    conv = torch.nn.Conv2d(c, k, 3, padding=1)
    x = torch.randn(1, c, size, size)
    xl = x.contiguous(memory_format=torch.channels_last)
    cl = torch.nn.Conv2d(c, k, 3, padding=1).to(memory_format=torch.channels_last); cl.load_state_dict(conv.state_dict())
    U = prep(conv.weight)
    err = (conv(x) - wconv(x, U, conv.bias)).abs().max().item()
    t_direct = best(lambda: cl(xl), repeats)
    t_w = best(lambda: wconv(x, U, conv.bias), repeats)
    return f"{c}->{k} direct {t_direct*1e3:.1f} ms  winograd {t_w*1e3:.1f} ms  max err {err:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads [default: 2]")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels [default: 128]")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per convolution, best kept [default: 5]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for c, k in [(64, 32), (128, 32), (192, 64), (64, 64)]:
            print(compare(c, k, args.size, args.repeats))


if __name__ == "__main__":
    main()
