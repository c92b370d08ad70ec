"""Does a Winograd F(4x4, 3x3) convolution written in eager PyTorch beat oneDNN's direct one on the CPU?

A record of a measured option that was not taken (docs/performance.md): on x4plus's layer shapes at 128 px
it was 1.7-5x slower, because its tile transforms move more memory than the direct convolution takes time.
Prints each shape's times and the largest difference from the direct result.

    python benchmarks/winograd.py [--threads 2] [--size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import time


@functools.cache
def transforms():
    """Winograd F(4x4, 3x3)'s matrices (B^T 6x6, G 6x3, A^T 4x6), made at first use: torch is imported by a run,
    not by ``--help``."""
    import torch

    bt = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float32)
    g = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                      [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    at = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                      dtype=torch.float32)
    return bt, g, at


def prep(w):
    """The kernels (K, C, 3, 3) in the Winograd domain, as (36, C, K)."""
    _, g, _ = transforms()
    u = g @ w @ g.T  # K, C, 6, 6
    return u.permute(2, 3, 1, 0).reshape(36, w.shape[1], w.shape[0]).contiguous()


def wconv(x, u, bias):
    """The 3x3 convolution (padding 1) of ``x`` by the kernels ``prep`` made, 4x4 output tiles at a time."""
    import torch

    bt, _, at = transforms()
    n, c, h, w = x.shape
    th, tw = -(-h // 4), -(-w // 4)
    xp = torch.nn.functional.pad(x, (1, tw * 4 + 1 - w, 1, th * 4 + 1 - h))
    d = xp.unfold(2, 6, 4).unfold(3, 6, 4)  # n c th tw 6 6
    d = d.permute(4, 5, 0, 2, 3, 1)  # 6 6 n th tw c
    v = torch.tensordot(bt, d, dims=([1], [0]))  # 6(i) 6 n th tw c
    v = torch.tensordot(bt, v, dims=([1], [1]))  # 6(j) 6(i) ...
    v = v.transpose(0, 1).reshape(36, n * th * tw, c)
    m = torch.bmm(v, u).reshape(6, 6, n, th, tw, -1)  # 6 6 n th tw k
    y = torch.tensordot(at, m, dims=([1], [0]))  # 4 6 n th tw k
    y = torch.tensordot(at, y, dims=([1], [1]))  # 4(j) 4(i) n th tw k
    y = y.permute(2, 5, 3, 1, 4, 0).reshape(n, -1, th * 4, tw * 4)[:, :, :h, :w]
    return y + bias.view(1, -1, 1, 1)


def best(f, n=5):
    """The shortest of ``n`` timed runs of ``f``, after one untimed."""
    f()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return min(times)


def compare(c: int, k: int, size: int, repeats: int) -> str:
    """One layer shape, C channels in and K out on a size x size input: both convolutions' best times and how far
    Winograd's result is from the direct one."""
    import torch

    conv = torch.nn.Conv2d(c, k, 3, padding=1)
    x = torch.randn(1, c, size, size)
    xl = x.contiguous(memory_format=torch.channels_last)
    cl = torch.nn.Conv2d(c, k, 3, padding=1).to(memory_format=torch.channels_last)
    cl.load_state_dict(conv.state_dict())
    u = prep(conv.weight)
    err = (conv(x) - wconv(x, u, conv.bias)).abs().max().item()
    t_direct = best(lambda: cl(xl), repeats)
    t_w = best(lambda: wconv(x, u, conv.bias), repeats)
    return f"{c}->{k} direct {t_direct*1e3:.1f} ms  winograd {t_w*1e3:.1f} ms  max err {err:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads [default: 2]")
    parser.add_argument("--size", type=int, default=128, help="input side in pixels [default: 128]")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per convolution, best kept [default: 5]")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for c, k in [(64, 32), (128, 32), (192, 64), (64, 64)]:
            print(compare(c, k, args.size, args.repeats))


if __name__ == "__main__":
    main()
