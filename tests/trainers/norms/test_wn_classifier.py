"""The WN family's classifier must not be the layer that makes WN untrainable (docs/design.md §3).

The measurement: after the scheme's init, one SGD step (lr 0.3) on one layer alone, by how much does
it move the logits of a batch, relative to their norm? With DDI on the classifier, pooled features of
large common mean and small spread give it g/‖v‖ ≈ 7 and the step moves the logits ~13× (a BN
model's classifier: ~0.9×); the default leaves the classifier at w = v.

Against the convs, the comparable number is a layer's step amplification (‖w‖/‖v‖)²: for w = g·v/‖v‖,
an SGD step on v moves the direction of w (‖w‖/‖v‖)² times as far as plain SGD on w would.
"""

from __future__ import annotations

import pytest
import torch

from study.spec import load
from trainers import norms
from trainers.data.generated import generate
from trainers.models import build_model
from trainers.step_sensitivity import one_step_logit_moves

LR = 0.3


@pytest.fixture(scope="module")
def batch():
    spec = load(None, [])  # the quick default's data and model
    d = spec.data
    x, y, *_ = generate(d.num_classes, 256, 64, d.image_size, float(d.noise), d.data_seed)
    return spec, x, y


def _moves(scheme_name: str, batch, **options) -> tuple[float, list[float]]:
    """(classifier's one-step logit move, every conv's), each layer stepped alone from the same init."""
    spec, x, y = batch
    torch.manual_seed(0)
    scheme = norms.create(scheme_name, **options)
    model = build_model(spec.model.arch, scheme, 10, cifar_width=spec.model.cifar_width,
                        cifar_blocks=spec.model.cifar_blocks)
    scheme.data_dependent_init(model, x[:64])
    moves = one_step_logit_moves(model, x[64:128], y[64:128], LR)
    fc = moves.pop("fc")
    return fc, sorted(moves.values()), model


def _amplification(layer) -> float:
    w = layer.weight().detach().flatten(1)
    return (w.norm(dim=1) / layer.v.detach().flatten(1).norm(dim=1)).pow(2).mean().item()


def _amplifications(model) -> tuple[float, list[float]]:
    convs = [_amplification(m) for n, m in model.named_modules() if hasattr(m, "v") and n != "fc"]
    return _amplification(model.fc), sorted(convs)


@pytest.mark.parametrize("scheme", ["wn", "wn_trelu"])
def test_wn_family_classifier_moves_logits_like_bns_and_not_an_order_of_magnitude_more_than_its_convs(scheme,
                                                                                                       batch):
    bn_fc, _, _ = _moves("bn", batch)
    fc, _, model = _moves(scheme, batch)
    assert fc < 3 * bn_fc, (fc, bn_fc)
    fc_amp, conv_amps = _amplifications(model)
    assert fc_amp < 10 * conv_amps[len(conv_amps) // 2], (fc_amp, conv_amps)


def test_classifier_ddi_is_the_amplifier(batch):
    """The option is wired and the measurement discriminates: DDI on the classifier amplifies its step
    by an order of magnitude over the default and over BN's classifier."""
    bn_fc, _, _ = _moves("bn", batch)
    default, _, _ = _moves("wn", batch)
    ddi, _, model = _moves("wn", batch, classifier_data_init=True)
    assert ddi > 5 * default and ddi > 5 * bn_fc, (ddi, default, bn_fc)
    fc_amp, conv_amps = _amplifications(model)
    assert fc_amp > 10 * conv_amps[len(conv_amps) // 2], (fc_amp, conv_amps)
