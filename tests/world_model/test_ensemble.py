"""The vectorised ensemble: shapes, independence of the members and the log-variance bounds."""

import pytest
import torch
from torch.nn import functional as F

from nmbrl.world_model import EnsembleLinear, GaussianEnsemble

E, B, IN, OUT, HIDDEN = 4, 8, 5, 3, 16


def make_ensemble(termination_head: bool = True) -> GaussianEnsemble:
    return GaussianEnsemble(E, IN, OUT, HIDDEN, num_hidden_layers=2, termination_head=termination_head)


def test_ensemble_linear_applies_each_member_to_its_own_slice():
    torch.manual_seed(0)
    layer = EnsembleLinear(E, IN, OUT)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(E, B, IN)

    out = layer(x)

    assert out.shape == (E, B, OUT)
    for e in range(E):
        torch.testing.assert_close(out[e], x[e] @ layer.weight[e] + layer.bias[e])


def test_ensemble_linear_runs_only_the_chosen_members():
    torch.manual_seed(0)
    layer = EnsembleLinear(E, IN, OUT)
    with torch.no_grad():
        layer.bias.normal_()
    members = torch.tensor([2, 0])
    x = torch.randn(len(members), B, IN)

    out = layer(x, members)

    assert out.shape == (len(members), B, OUT)
    for row, e in enumerate(members):
        torch.testing.assert_close(out[row], x[row] @ layer.weight[e] + layer.bias[e])


@pytest.mark.parametrize("termination_head", [True, False])
def test_gaussian_ensemble_output_shapes(termination_head):
    mean, logvar, logit = make_ensemble(termination_head)(torch.randn(E, B, IN))

    assert mean.shape == (E, B, OUT)
    assert logvar.shape == (E, B, OUT)
    if termination_head:
        assert logit.shape == (E, B, 1)
    else:
        assert logit is None


def test_gaussian_ensemble_members_subset_shapes():
    members = torch.tensor([3, 1])

    mean, logvar, logit = make_ensemble()(torch.randn(len(members), B, IN), members=members)

    assert mean.shape == logvar.shape == (len(members), B, OUT)
    assert logit.shape == (len(members), B, 1)


def test_members_subset_matches_the_full_ensemble():
    torch.manual_seed(0)
    net = make_ensemble()
    x = torch.randn(E, B, IN)
    members = torch.tensor([3, 1])

    full = net(x)
    subset = net(x[members], members=members)

    for full_out, subset_out in zip(full, subset):
        torch.testing.assert_close(subset_out, full_out[members])


def test_changing_one_member_changes_only_its_output():
    torch.manual_seed(0)
    net = make_ensemble()
    x = torch.randn(E, B, IN)
    before = net(x)

    with torch.no_grad():
        net.hidden[0].weight[0] += 1.0
        net.head.weight[0] *= 3.0
    after = net(x)

    for out_before, out_after in zip(before, after):
        assert not torch.allclose(out_before[0], out_after[0])
        torch.testing.assert_close(out_before[1:], out_after[1:], rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_logvar_stays_within_its_bounds_for_huge_inputs(scale):
    torch.manual_seed(0)
    net = make_ensemble()
    with torch.no_grad():
        net.max_logvar.fill_(0.0)
        net.min_logvar.fill_(-5.0)
    x = scale * torch.randn(E, 64, IN)

    _, logvar, _ = net(torch.cat([x, -x], dim=1))

    # The squash is soft: after clamping from above to max, the second softplus can lift a value
    # by at most softplus(min - max) = log(1 + e^-(max - min)) (here ~0.0067, and ~3e-5 at the
    # initial bounds 0.5 and -10). Anything beyond that would mean the bounds do not hold.
    overshoot = F.softplus(net.min_logvar - net.max_logvar)
    assert torch.isfinite(logvar).all()
    assert (logvar >= net.min_logvar).all()
    assert (logvar <= net.max_logvar + overshoot).all()
    # Huge inputs really reach both ends, so both bounds were exercised.
    assert logvar.min() < net.min_logvar.min() + 0.1
    assert logvar.max() > net.max_logvar.max() - 0.1
