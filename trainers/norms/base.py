"""The contract every normalization scheme fulfils, and the layers several schemes share.

A scheme tells the ResNet builder how to make each conv, norm, activation and the classifier, and may
run a data-dependent initialization on the first batch. Options (e.g. WN's ``init_scale``) are a
pydantic model per scheme, so a misspelt option fails with the scheme's name and the option's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from trainers.resnet import BasicBlock, Bottleneck


class SchemeOptions(BaseModel):
    """Options every scheme accepts; schemes subclass this to add their own."""

    model_config = ConfigDict(extra="forbid")


class NormScheme:
    """Base scheme: plain convs, no normalization, ReLU. Subclasses override what they change."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type[SchemeOptions]] = SchemeOptions
    # True when the scheme's forward uses batch statistics in training (a sample depends on its batch).
    uses_batch_statistics: ClassVar[bool] = False
    # The search-space family in search_spaces/ (e.g. WN-like schemes share one).
    search_family: ClassVar[str] = "default"
    # True when the scheme has an init scale the stability grid should sweep.
    has_init_scale: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = self.validate_options(options)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> SchemeOptions:
        try:
            return cls.Options(**options)
        except ValidationError as err:
            e = err.errors()[0]
            field = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                valid = ", ".join(cls.Options.model_fields) or "none"
                raise ValueError(f"schemes.{cls.name}.{field}: unknown option; valid options: {valid}") from None
            raise ValueError(f"schemes.{cls.name}.{field}: {e['msg']}, got {e.get('input')!r}") from None

    # --- layers ---------------------------------------------------------------------------------
    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)

    def norm(self, channels: int) -> nn.Module:
        return nn.Identity()

    def act(self, channels: int) -> nn.Module:
        return nn.ReLU(inplace=True)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return nn.Linear(in_features, out_features)

    # --- blocks: schemes that change the residual structure (NF, Fixup) override these ---------------
    def basic_block(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return BasicBlock(self, inplanes, planes, stride)

    def bottleneck(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return Bottleneck(self, inplanes, planes, stride)

    def stem_pool(self) -> nn.Module:
        """The ImageNet stem's 3×3/2 max-pool (He et al. 2016); NormProp re-normalizes its output."""
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def residual_gain(self) -> float:
        """Factor on each residual sum ``branch + identity`` before the block's last activation.

        1 (He et al. 2016) for every scheme but NormProp, which keeps the sum at unit variance.
        """
        return 1.0

    def finalize(self, model: nn.Module) -> None:
        """Called once the model is built (e.g. Fixup's rescaled init). Default: nothing."""

    # --- initialization -------------------------------------------------------------------------
    @torch.no_grad()
    def data_dependent_init(self, model: nn.Module, images: torch.Tensor) -> None:
        """Initialize from a batch (WN's data-dependent init). Default: nothing to do."""

    def lr_multipliers(self, model: nn.Module) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier (Fixup trains its scalars at lr/10). Default: none."""
        return {}

    def clip_gradients(self, model: nn.Module) -> None:
        """Called by the trainer after backward, before the optimizer step (NF's AGC). Default: nothing."""

    def describe(self) -> str:
        return f"{self.name:10s} {self.paper}"
