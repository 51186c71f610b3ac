"""The UNet's linear and convolution layers: torch's own, except that a weight stored in another dtype than
the input's (float8 with ``--fp8``) is cast to the input's dtype for the call.

With matching dtypes they run exactly as ``nn.Linear`` / ``nn.Conv2d`` (same parameters, same names, same
kernels); they are subclasses, so anything that looks for ``nn.Linear`` / ``nn.Conv2d`` finds them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn


def _cast(param: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if param is None or param.dtype == like.dtype:
        return param
    return param.to(like.dtype)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


def store_weights_in_fp8(network: nn.Module) -> int:
    """Keep the weights of ``network``'s linear and convolution layers as float8_e4m3fn (biases, norms and
    embeddings stay as they are); each call computes in the input's dtype. A1111's and Forge's fp8 storage:
    half the memory of fp16 weights for a small loss of precision. Returns the bytes saved."""
    saved = 0
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, (Linear, Conv2d)) and module.weight.dtype != FP8:
                weight = module.weight
                saved += weight.numel() * (weight.element_size() - 1)
                module.weight = nn.Parameter(weight.to(FP8), requires_grad=False)
    return saved
