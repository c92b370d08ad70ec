"""DDColor checkpoints with random weights in the released files' layout, for the colourisation tests.

The released ``ddcolor_paper_tiny.pth`` is ``{"params": state_dict}`` of DDColor-T: a ConvNeXt-T encoder, the
multi-scale colour decoder with 100 colour queries over 3 scales and 9 layers, ``nf`` 512, spectral-normalised
decoder convolutions and two output planes (Lab's a and b); ``build_ddcolor_model`` in piddnad/DDColor builds it so.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Lab a and b the network's last layer adds everywhere: a warm tone, well above a level of rounding, yet inside
# sRGB for all but the lightest and darkest grays (random weights alone give |a|, |b| < 0.3)
TONE = (6.0, 14.0)


def settle_spectral_norms(state: dict[str, torch.Tensor], steps: int = 200) -> None:
    """Give each spectral-normalised layer the power-iteration vectors a trained file holds: ``weight_u`` and
    ``weight_v`` run to (near) the top singular vectors of ``weight_orig`` (as a matrix, output channels by the rest),
    as training's one step per batch leaves them. A fresh layer's random vectors make the estimated norm near zero,
    so its weight is divided by almost nothing and the colours blow up to pure primaries."""
    for key in [key for key in state if key.endswith(".weight_orig")]:
        prefix = key[: -len("weight_orig")]
        matrix = state[key].reshape(state[key].shape[0], -1)
        u = state[prefix + "weight_u"]
        for _ in range(steps):
            v = torch.nn.functional.normalize(matrix.t() @ u, dim=0)
            u = torch.nn.functional.normalize(matrix @ v, dim=0)
        state[prefix + "weight_u"], state[prefix + "weight_v"] = u.contiguous(), v.contiguous()


def tiny_ddcolor_state(seed: int = 0, tone: tuple[float, float] = TONE) -> dict[str, torch.Tensor]:
    """DDColor-T's tensors, randomly initialised (``seed``), spectral norms settled, the last layer's bias ``tone``."""
    from spandrel_extra_arches.architectures.DDColor import DDColor

    torch.manual_seed(seed)
    net = DDColor(encoder_name="convnext-t", decoder_name="MultiScaleColorDecoder", input_size=(64, 64), nf=512,
                  num_output_channels=2, last_norm="Spectral", do_normalize=False, num_queries=100, num_scales=3,
                  dec_layers=9)
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    settle_spectral_norms(state)
    state["refine_net.0.0.bias"] = torch.tensor(tone, dtype=torch.float32)
    return state


def write_tiny_ddcolor(path: Path, seed: int = 0) -> Path:
    """``tiny_ddcolor_state`` saved at ``path`` as the release wraps it (``{"params": ...}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": tiny_ddcolor_state(seed)}, path)
    return path
