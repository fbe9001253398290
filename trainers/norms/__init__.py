"""Normalization schemes. Adding one: a new module that ``@register``s a ``NormScheme``, and one import here."""

# ruff: noqa: I001 - the registry lines are in the order `normstudy schemes` lists them
from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import create, get, names, register

# The registry: one line a scheme (importing the module registers it).
from trainers.norms import bn  # noqa: F401  Ioffe & Szegedy 2015
from trainers.norms import wn  # noqa: F401  Salimans & Kingma 2016
from trainers.norms import normprop  # noqa: F401  Arpit et al. 2016
from trainers.norms import wn_trelu  # noqa: F401  Xiang & Li 2017
from trainers.norms import gn  # noqa: F401  Wu & He 2018
from trainers.norms import ws_gn  # noqa: F401  Qiao et al. 2019
from trainers.norms import nf  # noqa: F401  Brock, De & Smith 2021 (+ AGC, Brock et al. 2021)
from trainers.norms import fixup  # noqa: F401  Zhang, Dauphin & Ma 2019
from trainers.norms import none  # noqa: F401  plain ResNet, no normalization

__all__ = ["NormScheme", "SchemeOptions", "create", "get", "names", "register"]
