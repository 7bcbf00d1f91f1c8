"""Glow-style normalizing flows on per-step feature vectors (written for DiCMoR).

Why here: DiCMoR maps each modality's (B, T, C) features to a latent of the same shape with
an invertible flow, scores the latent under a class-conditional Gaussian and recovers a
missing modality by running another modality's latent backwards through the missing one's
flow. Every step acts on the channel vector of each time step independently (the official
code uses 1x1 convolutions on (B, C, T, 1) tensors; a Linear on the last axis is the same map
with the same parameter count).

`forward` returns the latent and the log-determinant of the Jacobian per time step (B, T),
so callers can sum it over valid steps only. Steps:
- `ActNorm`: per-channel affine, initialised from the first training batch (Glow).
- `InvLinear`: an invertible channel mixing initialised as a random rotation.
- `AffineCoupling`: the second half is shifted and scaled by a net of the first half,
  s = sigmoid(log_s + 2), out_b = (in_b + t) * s (the official rosinality-style coupling).
`mode="coupling"` runs only the couplings, as the official DiCMoR `Flow.forward` does (its
ActNorm and invertible convolution are built but never called); `mode="glow"` runs all three.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FLOW_MODES = ("coupling", "glow")


class ZeroLinear(nn.Module):
    """Zero-initialised Linear whose output is scaled by exp(3 s) (Glow's ZeroConv2d)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)
        self.scale = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * torch.exp(3 * self.scale)


class ActNorm(nn.Module):
    """Per-channel y = scale (x + loc); data-dependent initialisation on the first call in
    training mode (zero mean, unit variance per channel over batch and time)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(channels))
        self.scale = nn.Parameter(torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                flat = x.reshape(-1, x.shape[-1])
                self.loc.copy_(-flat.mean(0))
                self.scale.copy_(1 / (flat.std(0) + 1e-6))
                self.initialized.fill_(1)
        logdet = torch.log(self.scale.abs()).sum().expand(x.shape[:-1])
        return self.scale * (x + self.loc), logdet

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.scale - self.loc


class InvLinear(nn.Module):
    """y = W x with W initialised as a random orthogonal matrix; log|det W| per step."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # in float64 for accuracy, returned in the input's dtype (a float64 flow keeps all of it)
        logdet = torch.slogdet(self.weight.double())[1].to(x.dtype).expand(x.shape[:-1])
        return x @ self.weight.t(), logdet

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        return y @ torch.linalg.inv(self.weight).t()


class AffineCoupling(nn.Module):
    """Affine coupling: (a, b) -> (a, (b + t(a)) sigmoid(log_s(a) + 2))."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"an affine coupling needs an even width, got {channels}")
        self.net = nn.Sequential(
            nn.Linear(channels // 2, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            ZeroLinear(hidden, channels),
        )
        for i in (0, 2):
            nn.init.normal_(self.net[i].weight, 0.0, 0.05)
            nn.init.zeros_(self.net[i].bias)

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self.net(a).chunk(2, dim=-1)
        return torch.sigmoid(log_s + 2), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, dim=-1)
        s, t = self._scale_shift(a)
        return torch.cat([a, (b + t) * s], dim=-1), torch.log(s).sum(-1)

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y.chunk(2, dim=-1)
        s, t = self._scale_shift(a)
        return torch.cat([a, b / s - t], dim=-1)


class FlowStep(nn.Module):
    """ActNorm, InvLinear and AffineCoupling; `mode` says which of them run."""

    def __init__(self, channels: int, hidden: int, mode: str) -> None:
        super().__init__()
        if mode not in FLOW_MODES:
            raise ValueError(f"flow mode must be one of {FLOW_MODES}, got {mode!r}")
        self.mode = mode
        self.actnorm = ActNorm(channels)
        self.invconv = InvLinear(channels)
        self.coupling = AffineCoupling(channels, hidden)

    def _parts(self) -> list[nn.Module]:
        if self.mode == "coupling":
            return [self.coupling]
        return [self.actnorm, self.invconv, self.coupling]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[:-1])
        for part in self._parts():
            x, ld = part(x)
            logdet = logdet + ld
        return x, logdet

    def reverse(self, y: torch.Tensor) -> torch.Tensor:
        for part in reversed(self._parts()):
            y = part.reverse(y)
        return y


class Glow(nn.Module):
    """One block of `n_flow` steps without multi-scale split (the official n_block=1).

    `prior` is the block's own standard-normal prior head of the official Glow; DiCMoR scores
    latents under its class-conditional priors instead, so it is built for parameter parity
    and never used."""

    def __init__(self, channels: int, n_flow: int = 32, hidden: int = 64, mode: str = "coupling") -> None:
        super().__init__()
        self.steps = nn.ModuleList(FlowStep(channels, hidden, mode) for _ in range(n_flow))
        self.prior = ZeroLinear(channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., C) -> (z, log|det dz/dx| per position (...))."""
        logdet = x.new_zeros(x.shape[:-1])
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        for step in reversed(self.steps):
            z = step.reverse(z)
        return z


def gaussian_log_p(x: torch.Tensor, mean: torch.Tensor, log_sd: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(log_sd)^2)."""
    return -0.5 * math.log(2 * math.pi) - log_sd - 0.5 * (x - mean) ** 2 / torch.exp(2 * log_sd)
