"""Model, objectives and metrics on small tensors: KL, bounds, exact plain-VAE limits, active units, schedules."""

import dataclasses
import math
import statistics

import pytest
import torch

from ouvae.config import Config
from ouvae.metrics import active_units, evaluate, expand_members, gradient_variance
from ouvae.model import HierarchicalVAE, Noise, Pass, discretized_logistic_log_prob, kl_to_standard_normal
from ouvae.objectives import beta_at, rows_for, training_loss
from ouvae.smoothing import sample_gaussian

torch.set_num_threads(1)


def small_model(seeds=(0,), **overrides) -> HierarchicalVAE:
    cfg = Config.from_preset("demo", latent_dims=(4, 3, 2), hidden_units=16, **overrides)
    return HierarchicalVAE(cfg, (1, 8, 8), "bernoulli", seeds)


def binary_batch(n=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 8, 8), 0.3), generator=g)


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def forward(model: HierarchicalVAE, x: torch.Tensor, rho, seed: int = 7, noise: Noise | None = None) -> Pass:
    """Every member on the same images x (N, C, H, W), member m smoothed at rho[m]."""
    noise = noise if noise is not None else model.draw_noise(x.shape[0], rho, gen(seed))
    return model(expand_members(x, model.members), torch.tensor(rho), noise)


def member_noise(noise: Noise, m: int) -> Noise:
    """Member m's slice of a population's noise, as the noise of a population of one."""
    one = lambda t: None if t is None else t[m:m + 1]  # noqa: E731
    return Noise([one(t) for t in noise.eps], [one(t) for t in noise.encoders], [one(t) for t in noise.decoders],
                 one(noise.decode_x))


def test_analytic_kl_matches_monte_carlo():
    g = gen(0)
    mu, logvar = torch.randn(1, 5, generator=g), torch.randn(1, 5, generator=g) * 0.5
    s = sample_gaussian(mu.expand(400_000, 5), logvar.expand(400_000, 5), torch.randn(400_000, 5, generator=g))
    log_q = (-0.5 * (math.log(2 * math.pi) + logvar + s.eps**2)).sum(-1)
    log_p = (-0.5 * (math.log(2 * math.pi) + s.z**2)).sum(-1)
    assert (log_q - log_p).mean().item() == pytest.approx(kl_to_standard_normal(mu, logvar).item(), rel=0.01)


def test_rho_one_and_k_one_give_exactly_the_plain_vae():
    x = binary_batch()
    model = small_model(smooth_samples=7)  # 7 equal copies do not average back to their value bit for bit
    plain_noise = model.draw_noise(x.shape[0], [1.0], gen())
    assert model.smoothed_maps([1.0]) == (False, False) and plain_noise.encoders == [None, None]
    plain = forward(model, x, [1.0], noise=plain_noise).log_weight  # no copies formed: f at the sample
    # rho = 1 with the copies formed and their noise given (as inside a population that smooths another member):
    # the same numbers bit for bit, so a rho = 1 member is the plain VAE whatever population it is in
    copies = dataclasses.replace(model.draw_noise(x.shape[0], [0.5], gen(8)), eps=plain_noise.eps)
    assert copies.encoders[0] is not None
    assert torch.equal(forward(model, x, [1.0], noise=copies).log_weight, plain)
    # K = 1 draws no copies at any rho, so the pass is the plain VAE's
    k1 = small_model(smooth_samples=1)
    assert k1.smoothed_maps([0.5]) == (False, False) and k1.draw_noise(x.shape[0], [0.5], gen()).decode_x is None
    assert torch.equal(forward(k1, x, [0.5], noise=plain_noise).log_weight, plain)
    # A rho = 1 member inside a population that smooths another member: the plain VAE path, given its noise.
    pop = small_model(seeds=(0, 0))
    noise = pop.draw_noise(x.shape[0], [1.0, 0.8], gen())
    mixed = forward(pop, x, [1.0, 0.8], noise=noise).log_weight
    alone = forward(model, x, [1.0], noise=member_noise(noise, 0)).log_weight
    assert torch.allclose(mixed[0], alone[0], rtol=0, atol=1e-5)
    assert not torch.allclose(mixed[1], alone[0], atol=1e-3)  # same parameters, smoothed at 0.8: another model


def test_smoothing_changes_the_model_only_below_rho_one():
    x = binary_batch()
    model = small_model()
    noise = model.draw_noise(x.shape[0], [0.5], gen())
    smoothed = forward(model, x, [0.5], noise=noise).log_weight
    assert not torch.allclose(smoothed, forward(model, x, [1.0], noise=noise).log_weight)


def test_a_member_computes_what_the_same_network_alone_computes():
    """Stacking is only batching: member m of a population, given its parameters and noise, is the model alone."""
    x = binary_batch(12)
    pop = small_model(seeds=(3, 4, 5))
    noise = pop.draw_noise(12, [0.7, 1.0, 0.9], gen())
    out = forward(pop, x, [0.7, 1.0, 0.9], noise=noise)
    for m, seed in enumerate((3, 4, 5)):
        alone = small_model(seeds=(seed,))
        assert torch.equal(alone.flat[0], pop.flat[m])  # a member starts from its own seed's initialisation
        ref = forward(alone, x, [[0.7, 1.0, 0.9][m]], noise=member_noise(noise, m))
        assert torch.allclose(out.log_weight[m], ref.log_weight[0], atol=1e-4)
        assert torch.allclose(out.kl[m], ref.kl[0], atol=1e-5)


def test_members_computed_in_chunks_get_exactly_the_gradients_of_one_pass():
    """A population trains a chunk of members per pass (a CPU: 8): with the same noise, the losses and gradients of
    the chunks are those of all members at once -- the chunks share nothing."""
    x = binary_batch(16)
    model, rho = small_model(seeds=(0, 1, 2, 3)), [0.7, 1.0, 0.8, 0.9]
    noise = model.draw_noise(16, rho, gen())
    whole = model.flat.detach().clone().requires_grad_()
    loss = training_loss(model, expand_members(x, 4), torch.tensor(rho), noise, torch.ones(4), torch.zeros(4), whole)
    loss.per_member.sum().backward()
    for part in (slice(0, 2), slice(2, 4)):
        params = model.flat[part].detach().requires_grad_()
        chunk_noise = Noise(*(([t[part] for t in f] if isinstance(f, list) else f[part])
                              for f in (noise.eps, noise.encoders, noise.decoders, noise.decode_x)))
        part_loss = training_loss(model, expand_members(x, 2), torch.tensor(rho[part]), chunk_noise, torch.ones(2),
                                  torch.zeros(2), params)
        part_loss.per_member.sum().backward()
        assert torch.allclose(part_loss.per_member, loss.per_member[part], rtol=1e-6)
        assert torch.allclose(params.grad, whole.grad[part], atol=1e-6)


@pytest.mark.parametrize("smooth", ["encoder", "decoder", "both"])
def test_per_layer_outputs_have_the_documented_shapes(smooth):
    out = forward(small_model(seeds=(0, 1), smooth=smooth), binary_batch(10), [0.8, 0.9])
    assert out.kl.shape == out.log_q.shape == out.log_p.shape == (2, 10, 3)
    assert out.log_px.shape == (2, 10) and [m.shape for m in out.posterior_means] == [(2, 10, d) for d in (4, 3, 2)]
    assert torch.isfinite(out.log_weight).all()


def spread_model() -> HierarchicalVAE:
    """A model whose posterior lies well away from its prior, so the gaps between bounds exceed the MC noise."""
    model = small_model()
    with torch.no_grad():
        model.flat.mul_(2.0)
    return model


def test_iw_bound_is_above_the_elbo_and_grows_with_k():
    """On the same draws L_k >= ELBO (Jensen); over independent draws the mean of L_k
    grows with k by more than three standard errors of the difference."""
    model, x = small_model(), binary_batch(512)
    for k in (2, 10):
        same = evaluate(model, x, iw_k=k, rho=[0.9], generator=gen(0))[0]
        assert same.iw_bound >= same.elbo
    bounds = {k: [evaluate(model, x, iw_k=k, rho=[0.9], generator=gen(s))[0].iw_bound for s in range(5)]
              for k in (2, 10, 200)}
    for lo, hi in ((2, 10), (10, 200)):
        se = math.sqrt((statistics.variance(bounds[lo]) + statistics.variance(bounds[hi])) / 5)
        assert statistics.mean(bounds[hi]) - statistics.mean(bounds[lo]) > 3 * se, bounds


def test_iw_bound_is_the_same_however_it_is_chunked():
    model, x = spread_model(), binary_batch(20)
    whole = evaluate(model, x, iw_k=500, rho=[1.0], generator=gen(1), max_rows=20_000)[0].iw_bound
    chunked = evaluate(model, x, iw_k=500, rho=[1.0], generator=gen(2), max_rows=100)[0].iw_bound  # 5 per pass
    l5 = evaluate(model, x, iw_k=5, rho=[1.0], generator=gen(3))[0].iw_bound
    # Chunks must combine into one L_500 (not average five-sample bounds): the difference is Monte Carlo noise,
    # a small fraction of the gap between L_5 and L_500.
    assert abs(whole - chunked) < 0.1 * (whole - l5)


def test_active_units_on_a_constructed_case():
    g = gen(0)
    # unit 0 varies strongly across x, unit 1 barely (var 0.004), unit 2 is constant, unit 3 has var ~0.04
    means = torch.stack([torch.randn(5000, generator=g), 0.063 * torch.randn(5000, generator=g), torch.zeros(5000),
                         0.2 * torch.randn(5000, generator=g)], 1)
    assert int(active_units(means)) == 2
    assert int(active_units(means, threshold=0.001)) == 3
    assert active_units(torch.stack([means, means[:, [0, 2, 2, 2]]])).tolist() == [2, 1]  # per member


def test_active_units_do_not_count_monte_carlo_noise_whatever_the_sample_count():
    """A posterior that ignores x (the first encoder layer's weights zeroed) has no active unit in any layer, but
    above the first layer E_q[u | x] is a mean over k samples of the layers below, whose noise spreads the means
    across x by Var/k: without subtracting it, few samples count units as active (here every unit above the first
    layer at k = 5: spreads of 0.03-0.13 against the threshold's 0.01). A real spread is still counted: the same
    model with its x-dependence keeps active units at every k."""
    model, x = spread_model(), binary_batch(1000)
    for k in (5, 50):
        evals = evaluate(model, x, iw_k=k, rho=[0.9], generator=gen(k))[0]
        assert evals.layer_active_units[0] > 0 and evals.layer_active_units[-1] > 0, (k, evals.layer_active_units)
    with torch.no_grad():
        model.layout.views(model.flat)["encode_x.0.weight"].zero_()
    for k in (5, 50):
        evals = evaluate(model, x, iw_k=k, rho=[0.9], generator=gen(k))[0]
        assert evals.layer_active_units == [0, 0, 0], (k, evals.layer_active_units)


def test_evaluation_refuses_a_single_sample():
    with pytest.raises(ValueError, match="iw_k >= 2"):
        evaluate(small_model(), binary_batch(8), iw_k=1, rho=[0.9], generator=gen())


def losses(model: HierarchicalVAE, x: torch.Tensor, rho, draws: int, free_bits=0.0) -> torch.Tensor:
    """(draws, M) training losses on the same batch over independent noise draws."""
    m = model.members
    out = []
    for d in range(draws):
        rows = rows_for(model, x.shape[0])
        out.append(training_loss(model, expand_members(x, m), torch.tensor(rho),
                                 model.draw_noise(rows, rho, gen(d)), torch.ones(m),
                                 torch.full((m,), free_bits)).per_member.detach())
    return torch.stack(out)


def test_iwae_objective_is_a_tighter_bound_than_the_elbo():
    x = binary_batch()
    iwae = losses(small_model(objective="iwae", iw_samples=5), x, [1.0], draws=30)[:, 0]
    elbo = losses(small_model(), x, [1.0], draws=30)[:, 0]
    gap = (elbo - iwae).mean()  # -L_5 <= -L_1 in expectation: the IWAE loss is lower
    assert gap > 3 * (elbo - iwae).std() / math.sqrt(30) and gap > 0.1


def test_free_bits_floor_each_layer_kl_per_member():
    x = binary_batch()
    model = small_model(seeds=(0, 0))
    noise = model.draw_noise(x.shape[0], [1.0, 1.0], gen(0))
    loss = training_loss(model, expand_members(x, 2), torch.ones(2), noise, torch.ones(2), torch.tensor([0.0, 50.0]))
    out = forward(model, x, [1.0, 1.0], noise=noise)
    recon = -out.log_px.mean(1)
    assert loss.per_member[1].item() == pytest.approx((recon[1] + 50.0 * 3).item(), rel=1e-5)  # all KLs < 50
    assert loss.per_member[0].item() == pytest.approx((recon[0] + out.kl[0].mean(0).sum()).item(), rel=1e-5)


def test_gradient_variance_is_the_variance_over_noise_draws_per_member():
    """Four independent copies of each image average the noise of four draws: a quarter of the variance."""
    model, x = small_model(seeds=(0, 1)), binary_batch(64)
    kwargs = dict(rho=[1.0, 0.7], beta=torch.ones(2), free_bits=torch.zeros(2), draws=40)
    one = gradient_variance(model, x, generator=gen(0), **kwargs)
    four = gradient_variance(model, x.repeat(4, 1, 1, 1), generator=gen(1), **kwargs)
    assert all(0.15 < b / a < 0.4 for a, b in zip(one, four)), (one, four)


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


def test_conv_members_compute_what_each_conv_network_alone_computes():
    """Grouped convolutions (members folded into channels) equal each member's own convolutions."""
    for shape, lik in [((3, 32, 32), "discretized_logistic"), ((1, 28, 28), "bernoulli")]:
        cfg = Config.from_preset("paper-conv", hidden_units=8, latent_dims=(6, 4), smooth_samples=3)
        x = torch.rand(4, *shape, generator=gen(1))
        x = torch.bernoulli(x, generator=gen(2)) if lik == "bernoulli" else (x * 255).round() / 255
        pop = HierarchicalVAE(cfg, shape, lik, seeds=(1, 2))
        noise = pop.draw_noise(4, [0.8, 0.9], gen())
        out = forward(pop, x, [0.8, 0.9], noise=noise)
        assert torch.isfinite(out.log_weight).all() and out.kl.shape == (2, 4, 2)
        for m, seed in enumerate((1, 2)):
            alone = HierarchicalVAE(cfg, shape, lik, seeds=(seed,))
            ref = forward(alone, x, [[0.8, 0.9][m]], noise=member_noise(noise, m))
            assert torch.allclose(out.log_weight[m], ref.log_weight[0], rtol=1e-5, atol=1e-3)


def test_recomputing_smoothed_maps_gives_the_same_loss_and_gradients():
    x = binary_batch()
    grads = []
    for recompute in (False, True):
        model = small_model(seeds=(0, 1), smooth_recompute=recompute)
        noise = model.draw_noise(x.shape[0], [0.7, 0.9], gen(5))
        loss = training_loss(model, expand_members(x, 2), torch.tensor([0.7, 0.9]), noise, torch.ones(2),
                             torch.zeros(2))
        loss.per_member.sum().backward()
        grads.append(model.flat.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
