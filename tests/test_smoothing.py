"""The OU operator's defining properties, checked by Monte Carlo on the model's own `ou_smooth`.

`T` below applies `ou_smooth` exactly as the model does (one member, a latent read in the coordinates of N(0, 1),
as the top prior's are, so the copies are rho * eps + sqrt(1 - rho^2) * eta), so the properties hold for the one
T_rho the product computes.
"""

import math

import pytest
import torch

from ouvae.smoothing import GaussianSample, ou_smooth

torch.set_num_threads(1)


def hermite(k: int, x: torch.Tensor) -> torch.Tensor:
    """Probabilists' Hermite polynomial He_k: the eigenfunctions of T_rho, eigenvalue rho^k."""
    h0, h1 = torch.ones_like(x), x
    if k == 0:
        return h0
    for n in range(1, k):
        h0, h1 = h1, x * h1 - n * h0
    return h1


def T(f, eps: torch.Tensor, rho: float, k: int, seed: int, center: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """T_rho f at the standard-normal points eps (N, d), by `ou_smooth` with K = k copies (a population of one
    member): the latent z = center + scale * eps is read in the coordinates of N(center, scale^2), as the model
    reads a posterior sample, and f sees those coordinates again."""
    z = (center + scale * eps).unsqueeze(0)
    eta = torch.randn((1, k, *eps.shape), generator=torch.Generator().manual_seed(seed), dtype=eps.dtype)
    rho_t = torch.tensor([rho], dtype=eps.dtype)
    return ou_smooth(lambda c: f((c[0] - center) / scale).unsqueeze(0), z, torch.full_like(z, center),
                     torch.full_like(z, scale), rho_t, eta, identity=rho_t >= 1.0)[0]


EPS = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64).unsqueeze(1)  # 9 points, 1 dimension


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("rho", [0.3, 0.7, 0.95])
@pytest.mark.parametrize("center, scale", [(0.0, 1.0), (0.5, 2.0)], ids=["prior", "posterior"])
def test_hermite_component_is_scaled_by_rho_to_the_k(k, rho, center, scale):
    smoothed = T(lambda e: hermite(k, e), EPS, rho, 200_000, seed=k, center=center, scale=scale)
    expected = rho**k * hermite(k, EPS)
    # Monte Carlo error of the mean of He_k over 2e5 draws is below ~0.02 * sqrt(k!) here
    assert torch.allclose(smoothed, expected, atol=0.03 * math.sqrt(math.factorial(k)))


def test_gaussian_mean_is_kept():
    f = lambda e: torch.tanh(3 * e) + e**2  # noqa: E731 - not a polynomial: mean E f = 1 + 0
    eps = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    smoothed = T(f, eps, 0.6, 64, seed=0)
    assert smoothed.mean().item() == pytest.approx(f(eps).mean().item(), abs=0.03)
    assert smoothed.mean().item() == pytest.approx(1.0, abs=0.05)


def test_variance_is_damped_at_least_by_rho_squared():
    f = lambda e: torch.tanh(3 * e)  # noqa: E731 - zero mean, many Hermite components
    eps = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for rho in (0.5, 0.8):
        assert T(f, eps, rho, 256, seed=1).var().item() <= rho**2 * f(eps).var().item()


def test_semigroup_property():
    rho, sigma = 0.8, 0.6
    f = lambda e: hermite(3, e) + torch.sin(e)  # noqa: E731
    nested = T(lambda e: T(f, e, sigma, 400, seed=3), EPS, rho, 400, seed=2)
    direct = T(f, EPS, rho * sigma, 160_000, seed=4)
    assert torch.allclose(nested, direct, atol=0.1)


def test_rho_one_is_the_identity_exactly_even_with_copies_formed():
    """A member at rho = 1 inside a population that smooths (copies formed, noise given): f(z) bit for bit, not
    the average of K copies equal to z up to rounding."""
    f = lambda e: torch.sin(5 * e) / 3  # noqa: E731
    eps = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(T(f, eps, 1.0, 7, seed=5), f(eps))


def test_copies_have_the_marginal_of_the_sample():
    """Each copy is again N(0, 1) and keeps correlation rho with the sample it smooths (f = identity shows them)."""
    eps = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(4))
    copies = []
    z = eps.unsqueeze(0)
    eta = torch.randn((1, 3, *eps.shape), generator=torch.Generator().manual_seed(5))
    ou_smooth(lambda c: copies.append(c) or c, z, torch.zeros_like(z), torch.ones_like(z), torch.tensor([0.7]), eta)
    copies = copies[0].view(3, 200_000)
    assert copies.mean().item() == pytest.approx(0.0, abs=0.01)
    assert copies.std().item() == pytest.approx(1.0, abs=0.01)
    corr = torch.corrcoef(torch.stack([copies[0], eps[:, 0]]))[0, 1].item()
    assert corr == pytest.approx(0.7, abs=0.01)  # each copy keeps correlation rho with the original


def test_all_copies_of_all_members_go_through_the_network_in_one_call():
    calls = []

    def f(z):
        calls.append(z.shape)
        return 2 * z

    mu, std, eps = torch.zeros(3, 6, 4), torch.ones(3, 6, 4), torch.randn(3, 6, 4)
    eta = torch.randn(3, 5, 6, 4)
    out = ou_smooth(f, mu + std * eps, mu, std, torch.tensor([0.5, 0.9, 1.0]), eta)
    assert calls == [torch.Size([3, 30, 4])]  # members x (K copies * 6 rows) x 4
    assert out.shape == (3, 6, 4)


def test_each_member_is_smoothed_at_its_own_rho_and_rho_one_members_are_untouched():
    torch.manual_seed(6)
    f = lambda z: torch.sin(5 * z)  # noqa: E731
    mu, std = torch.randn(3, 50, 2), torch.rand(3, 50, 2) + 0.5
    eps = torch.randn(3, 50, 2)
    sample = GaussianSample(mu + std * eps, mu, std, eps)
    eta = torch.randn(3, 4, 50, 2)
    rho = torch.tensor([0.6, 1.0, 0.3])
    out = ou_smooth(f, sample.z, sample.mu, sample.std, rho, eta, identity=rho >= 1.0)
    assert torch.equal(out[1], f(sample.z[1]))  # exactly f(z), not an average of K equal values
    for m in (0, 2):  # each member alone, with its own rho and noise, gives the same numbers
        alone = GaussianSample(*(t[m:m + 1] for t in sample))
        assert torch.allclose(out[m], ou_smooth(f, alone.z, alone.mu, alone.std, rho[m:m + 1], eta[m:m + 1])[0],
                              atol=1e-6)
    assert not torch.allclose(out[0], f(sample.z[0]))
