"""Model, objectives and metrics on small tensors: KL, bounds, exact plain-VAE limits, active units, schedules."""

import math

import pytest
import torch

from ouvae.config import Config
from ouvae.metrics import active_units, evaluate, gradient_variance
from ouvae.model import HierarchicalVAE, discretized_logistic_log_prob, kl_to_standard_normal
from ouvae.objectives import beta_at, training_loss
from ouvae.smoothing import sample_gaussian

torch.set_num_threads(1)


def small_model(**overrides) -> HierarchicalVAE:
    torch.manual_seed(0)
    cfg = Config.from_preset("demo", latent_dims=(4, 3, 2), hidden_units=16, **overrides)
    return HierarchicalVAE(cfg, (1, 8, 8), "bernoulli")


def binary_batch(n=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3), generator=g)


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 5), torch.randn(1, 5) * 0.5
    s = sample_gaussian(mu.expand(400_000, 5), logvar.expand(400_000, 5))
    log_q = (-0.5 * (math.log(2 * math.pi) + logvar + s.eps**2)).sum(-1)
    log_p = (-0.5 * (math.log(2 * math.pi) + s.z**2)).sum(-1)
    assert (log_q - log_p).mean().item() == pytest.approx(kl_to_standard_normal(mu, logvar).item(), rel=0.01)


def test_rho_one_and_k_one_give_exactly_the_plain_vae():
    x = binary_batch()
    plain = small_model(rho=1.0)
    results = []
    for rho, k in [(1.0, 5), (0.5, 1)]:
        model = small_model(rho=rho, smooth_samples=k)
        model.load_state_dict(plain.state_dict())
        torch.manual_seed(7)
        results.append(model(x).log_weight)
    torch.manual_seed(7)
    reference = plain(x).log_weight
    assert torch.equal(results[0], reference) and torch.equal(results[1], reference)


def test_smoothing_changes_the_model_only_below_rho_one():
    x = binary_batch()
    model = small_model(rho=0.5)
    torch.manual_seed(7)
    smoothed = model(x).log_weight
    torch.manual_seed(7)
    plain = model(x, rho=1.0).log_weight
    assert not torch.allclose(smoothed, plain)


@pytest.mark.parametrize("smooth", ["encoder", "decoder", "both"])
def test_per_layer_outputs_have_the_documented_shapes(smooth):
    out = small_model(rho=0.8, smooth=smooth)(binary_batch(10))
    assert out.kl.shape == out.log_q.shape == out.log_p.shape == (10, 3)
    assert out.log_px.shape == (10,) and [m.shape[1] for m in out.posterior_means] == [4, 3, 2]
    assert torch.isfinite(out.log_weight).all()


def test_iw_bound_is_above_the_elbo_and_grows_with_k():
    model = small_model(rho=0.9)
    x = binary_batch(64)
    torch.manual_seed(0)
    bounds = [evaluate(model, x, iw_k=k).iw_bound for k in (1, 10, 200)]
    elbo = evaluate(model, x, iw_k=50).elbo
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] > elbo
    assert bounds[0] == pytest.approx(elbo, abs=0.5)  # L_1 is an ELBO estimate


def test_iw_bound_is_the_same_however_it_is_chunked():
    model = small_model()
    x = binary_batch(20)
    torch.manual_seed(1)
    a = evaluate(model, x, iw_k=500, max_rows=20_000).iw_bound
    torch.manual_seed(1)
    b = evaluate(model, x, iw_k=500, max_rows=100).iw_bound  # 5 samples per pass
    assert a == pytest.approx(b, abs=0.05)


def test_active_units_on_a_constructed_case():
    torch.manual_seed(0)
    # unit 0 varies strongly across x, unit 1 barely (var 0.004), unit 2 is constant, unit 3 has var ~0.04
    means = torch.stack([torch.randn(5000), 0.063 * torch.randn(5000), torch.zeros(5000),
                         0.2 * torch.randn(5000)], 1)
    assert active_units(means) == 2
    assert active_units(means, threshold=0.001) == 3


def test_iwae_objective_with_k_samples_runs_and_differs_from_the_elbo():
    x = binary_batch()
    torch.manual_seed(0)
    iwae_loss, _ = training_loss(small_model(objective="iwae", iw_samples=5), x, 1.0)
    torch.manual_seed(0)
    elbo_loss, _ = training_loss(small_model(), x, 1.0)
    assert iwae_loss.item() < elbo_loss.item() + 1.0 and torch.isfinite(iwae_loss)


def test_free_bits_floor_each_layer_kl():
    x = binary_batch()
    torch.manual_seed(0)
    loss_free, _ = training_loss(small_model(free_bits=50.0), x, 1.0)
    torch.manual_seed(0)
    out = small_model()(x)
    expected = -out.log_px.mean() + 50.0 * 3  # every layer's KL is far below the 50-nat floor
    assert loss_free.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_variance_is_finite_and_positive():
    x = binary_batch(64)
    torch.manual_seed(0)
    plain = gradient_variance(small_model(rho=1.0), x, 1.0, draws=20)
    assert math.isfinite(plain) and plain > 0


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_warmup_schedules_run_from_beta_min_to_beta_max(schedule):
    cfg = Config.from_preset("demo", beta_schedule=schedule, beta_min=0.1, beta_max=1.0, anneal_epochs=10)
    values = [beta_at(cfg, e) for e in (0, 2.5, 5, 7.5, 10, 20)]
    assert values[0] == pytest.approx(0.1) and values[-1] == values[-2] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_cyclical_and_constant_schedules():
    cfg = Config.from_preset("demo", beta_schedule="cyclical", anneal_epochs=4, n_cycles=2, cycle_ratio=0.5)
    assert [beta_at(cfg, e) for e in (0, 1, 2, 3, 4, 5, 8, 100)] == pytest.approx([0, 0.5, 1, 1, 0, 0.5, 1, 1])
    assert beta_at(Config.from_preset("demo", beta_max=0.7), 3) == 0.7


def test_discretized_logistic_is_a_distribution_over_256_values():
    x = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1)
    for mean, log_scale in [(0.3, -3.0), (0.0, -1.0), (0.99, -5.0)]:
        p = discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_scale)).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_conv_model_runs_on_cifar_and_mnist_shapes():
    torch.manual_seed(0)
    for shape, lik in [((3, 32, 32), "discretized_logistic"), ((1, 28, 28), "bernoulli")]:
        cfg = Config.from_preset("paper-conv", hidden_units=8, latent_dims=(6, 4), rho=0.8, smooth_samples=3)
        model = HierarchicalVAE(cfg, shape, lik)
        x = torch.rand(4, *shape) if lik != "bernoulli" else torch.bernoulli(torch.rand(4, *shape))
        if lik != "bernoulli":
            x = (x * 255).round() / 255
        out = model(x)
        assert torch.isfinite(out.log_weight).all() and out.kl.shape == (4, 2)


def test_recomputing_smoothed_maps_gives_the_same_loss_and_gradients():
    x = binary_batch()
    grads = []
    for recompute in (False, True):
        model = small_model(rho=0.7, smooth_recompute=recompute)
        torch.manual_seed(5)
        loss, _ = training_loss(model, x, 1.0)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)
