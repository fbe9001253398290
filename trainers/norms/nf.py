"""Normalizer-free ResNets — Brock, De & Smith (2021), "Characterizing signal propagation to close the
performance gap in unnormalized ResNets", ICLR, arXiv 2101.08692; with adaptive gradient clipping
from Brock, De, Smith & Simonyan (2021), "High-Performance Large-Scale Image Recognition Without
Normalization" (NFNets), ICML, arXiv 2102.06171.

No normalization layers and no batch statistics. Three parts:

1. Scaled weight standardization, per output channel i with fan-in N (``ScaledStdConv2d``):

       Ŵ_i = γ · g_i · (W_i − μ_i) / (σ_i √N)         (+ a bias b_i, init 0)

   g_i is a learnable gain initialised to 1 and γ = √2 / √(1 − 1/π) ≈ 1.7128 the ReLU gain, so that
   Ŵ ∗ ReLU(z) has unit variance for z ~ N(0, 1) (and zero mean: the rows of Ŵ sum to zero). As in
   DeepMind's reference code, γ is applied in the activation (``ScaledReLU``: γ·ReLU) rather than in
   the conv — the same function, since the conv is linear — so the stem conv, which sees the image and
   no ReLU, gets no γ. σ√N is computed as √max(N·σ², ε) with ε = ``ws_eps`` = 1e-4 (their code).
   Raw weights start at N(0, 1/N) (their fan-in init).

2. Residual blocks with analytic signal-propagation scalars:

       h_{i+1} = h_i + α · s_i · f_i(h_i / β_i),    β_i = √Var(h_i)   (expected, computed analytically)
       Var(h_0) = 1;  Var(h_{i+1}) = Var(h_i) + α²;  after a transition block Var(h_{i+1}) = 1 + α²

   f_i begins with the activation (pre-activation ResNet, v1.5 stride on the 3×3 conv) and there is no
   ReLU after the addition. A transition block (one whose shape changes) has a 1×1 scaled-WS shortcut
   conv; as in both reference implementations (DeepMind's and timm's) it reads the *activated* input
   γ·ReLU(h/β), which has unit variance, hence the reset to 1 + α². α = 0.2 (``alpha``, the paper's).
   s_i is a learnable scalar skip gain; DeepMind's code initialises it at 0 (SkipInit), which makes
   every block the identity at init; we default to ``skip_gain_init`` = 1, the model the paper's
   variance analysis describes (and our test checks). β_i is set by ``finalize`` once the model exists.
   Stem: the stem conv with no activation after it (pre-activation ResNets); a final γ·ReLU before
   global pooling. Classifier: a plain linear layer with weights ~ N(0, 0.01²) and zero bias
   (``fc_init_std``, DeepMind's NF-ResNet; 0 gives the NFNets' zero init).

3. Adaptive gradient clipping (NFNets §4), unit-wise: for each output unit i (a row of a weight, a
   conv's filter; a whole vector or scalar for gains and biases) with ‖W_i‖* = max(‖W_i‖, ε), ε = 1e-3,

       G_i ← λ · ‖W_i‖* / ‖G_i‖ · G_i     if ‖G_i‖ / ‖W_i‖* > λ,   else G_i unchanged

   applied to every parameter except the final classifier's (NFNets §4.1: not clipping it helps). λ =
   ``agc_clip`` = 0.01, the paper's value and both reference implementations' default; the paper
   tuned it at batch 1024–4096 and reports that smaller batches tolerate larger λ, so the ``nf``
   search family should sweep it (it plays the role other schemes' init scale plays in the stability
   grid). The trainer calls ``clip_gradients(model)`` after backward, before the optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register

RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))  # γ = 1 / std(ReLU(z)), z ~ N(0, 1)


class ScaledReLU(nn.ReLU):
    """γ · ReLU(x) (a ReLU subclass, so dead-unit counters still recognise it)."""

    def __init__(self, gamma: float = RELU_GAIN) -> None:
        super().__init__(inplace=False)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * self.gamma

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:.6f}"


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardization Ŵ_i = g_i (W_i − μ_i)/(σ_i √N), learnable gain g."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, eps: float = 1e-4) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
        self.gain = nn.Parameter(torch.ones(out_ch))
        self.eps = eps
        nn.init.normal_(self.weight, std=self.weight[0].numel() ** -0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def standardized_weight(self) -> torch.Tensor:
        flat = self.weight.flatten(1)
        var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
        scale = torch.rsqrt((var * flat.shape[1]).clamp_min(self.eps)) * self.gain.unsqueeze(1)
        return ((flat - mean) * scale).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class _NFBlock(nn.Module):
    """h + α · s · f(h/β); ``beta`` (expected std of the input) and ``expected_var`` (of the output)
    are set by ``NormFree.finalize``."""

    expansion = 1
    downsample: nn.Module | None

    def __init__(self, alpha: float, skip_gain_init: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = 1.0
        self.expected_var = 1.0 + alpha**2
        self.skip_gain = nn.Parameter(torch.tensor(float(skip_gain_init)))

    def residual(self, preact: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.act1(x / self.beta)
        shortcut = x if self.downsample is None else self.downsample(preact)
        return shortcut + self.residual(preact) * (self.skip_gain * self.alpha)


class NFBasicBlock(_NFBlock):
    """Pre-activation basic block: f(h/β) = conv2(act(conv1(act(h/β))))."""

    expansion = 1

    def __init__(self, scheme: NormFree, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__(scheme.options.alpha, scheme.options.skip_gain_init)
        self.act1 = scheme.act(inplanes)
        self.conv1 = scheme.conv(inplanes, planes, 3, stride, 1)
        self.act2 = scheme.act(planes)
        self.conv2 = scheme.conv(planes, planes, 3, 1, 1)
        self.downsample = _shortcut(scheme, inplanes, planes, stride)

    def residual(self, preact: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act2(self.conv1(preact)))


class NFBottleneck(_NFBlock):
    """Pre-activation bottleneck (DeepMind's NFResBlock): 1×1 → 3×3 (stride) → 1×1, width ``planes``."""

    expansion = 4

    def __init__(self, scheme: NormFree, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__(scheme.options.alpha, scheme.options.skip_gain_init)
        out = planes * self.expansion
        self.act1 = scheme.act(inplanes)
        self.conv1 = scheme.conv(inplanes, planes, 1)
        self.act2 = scheme.act(planes)
        self.conv2 = scheme.conv(planes, planes, 3, stride, 1)
        self.act3 = scheme.act(planes)
        self.conv3 = scheme.conv(planes, out, 1)
        self.downsample = _shortcut(scheme, inplanes, out, stride)

    def residual(self, preact: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.act2(self.conv1(preact)))
        return self.conv3(self.act3(out))


def _shortcut(scheme: NormScheme, inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return scheme.conv(inplanes, outplanes, 1, stride)


def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x_i‖ per output unit (dim 0) for matrices and conv kernels; the whole norm for vectors/scalars."""
    if x.dim() <= 1:
        return x.norm()
    return x.flatten(1).norm(dim=1).view((-1,) + (1,) * (x.dim() - 1))


@torch.no_grad()
def adaptive_grad_clip_(parameters: Iterable[torch.Tensor], clip: float, eps: float = 1e-3) -> None:
    """NFNets' unit-wise AGC, in place: G_i ← λ‖W_i‖*/‖G_i‖ · G_i where ‖G_i‖/‖W_i‖* > λ (``clip``),
    ‖W_i‖* = max(‖W_i‖, ``eps``); other units' gradients are left untouched."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p.detach()).clamp_min(eps) * clip
        grad_norm = _unitwise_norm(p.grad)
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), 1.0)
        p.grad.mul_(scale.to(p.grad.dtype))


class NormFreeOptions(SchemeOptions):
    alpha: float = Field(0.2, gt=0)  # α: residual-branch scale (paper: 0.2)
    skip_gain_init: float = 1.0  # s at init; DeepMind's code: 0 (SkipInit)
    fc_init_std: float = Field(0.01, ge=0)  # classifier weight std; 0 = zero init (NFNets)
    ws_eps: float = Field(1e-4, gt=0)  # ε in √max(N·σ², ε)
    agc: bool = True  # adaptive gradient clipping (NFNets); off = the NF-ResNet paper alone
    agc_clip: float = Field(0.01, gt=0)  # λ (NFNets, batch 1024–4096)
    agc_eps: float = Field(1e-3, gt=0)  # floor on ‖W_i‖


@register
class NormFree(NormScheme):
    name = "nf"
    paper = "Brock, De & Smith 2021, arXiv 2101.08692 (AGC: Brock et al. 2021, arXiv 2102.06171)"
    Options = NormFreeOptions
    search_family = "nf"

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return ScaledStdConv2d(in_ch, out_ch, kernel_size, stride, padding, eps=self.options.ws_eps)

    def act(self, channels: int) -> nn.Module:
        return ScaledReLU(RELU_GAIN)

    def basic_block(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return NFBasicBlock(self, inplanes, planes, stride)

    def bottleneck(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return NFBottleneck(self, inplanes, planes, stride)

    def finalize(self, model: nn.Module) -> None:
        # Pre-activation layout: nothing after the stem conv, a γ·ReLU before global pooling.
        model.act1 = nn.Identity()
        if not isinstance(model.avgpool, nn.Sequential):
            model.avgpool = nn.Sequential(self.act(model.fc.in_features), model.avgpool)
        # β_i = √Var(h_i) from the analytic recursion, in forward order.
        var = 1.0
        for stage in model.stages:
            for block in getattr(model, stage):
                block.beta = math.sqrt(var)
                var = (1.0 if block.downsample is not None else var) + block.alpha**2
                block.expected_var = var
        with torch.no_grad():
            if self.options.fc_init_std > 0:
                nn.init.normal_(model.fc.weight, std=self.options.fc_init_std)
            else:
                nn.init.zeros_(model.fc.weight)
            nn.init.zeros_(model.fc.bias)

    def clip_gradients(self, model: nn.Module) -> None:
        if not self.options.agc:
            return
        model = getattr(model, "module", model)  # a DDP wrapper's module
        skip = {id(p) for p in model.fc.parameters()}
        params = [p for p in model.parameters() if id(p) not in skip]
        adaptive_grad_clip_(params, self.options.agc_clip, self.options.agc_eps)
