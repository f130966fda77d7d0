"""The training step a GPU can run without waiting for the host: no host read of a device tensor and no tensor
built from host data inside a step, a number of dispatched ATen ops that does not grow with the members, beta
computed on the device exactly as beta_at, a masked per-member Adam, and a compiled step equal to the eager one.
Tests marked `cuda` run where torch sees a GPU (benchmarks/gpu_check.py runs them) and are skipped elsewhere; they
need only torch, numpy and pytest, so the images here are made by the test (random binary 8x8 images)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ouvae.config import BETA_SCHEDULES, Config
from ouvae.data import DatasetSplits
from ouvae.model import Noise
from ouvae.objectives import MemberSchedules, beta_at
from ouvae.optim import MemberAdam
from ouvae.population import Population

torch.set_num_threads(1)
HOST_READS = {"tolist", "item", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def images() -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    train, evals = (torch.bernoulli(torch.rand(n, 1, 8, 8, generator=g), generator=g) for n in (400, 100))
    return DatasetSplits("random-8x8", train, evals, evals, "static", "bernoulli", "random binary images")


def quick(**overrides) -> Config:
    base = dict(rho=0.8, latent_dims=(5, 5), hidden_units=32, steps=40, eval_every=1000, eval_iw_k=5, n_train=400,
                eval_max_examples=100)
    return Config.from_preset("demo", **{**base, **overrides})


class StepCensus(TorchFunctionMode):
    """Counts the ATen ops a block dispatches, and the host reads (tolist, item, bool(), ...) and tensors made from
    host data (torch.tensor: aten.lift_fresh) or copied off or onto another device inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.host: Counter[str] = Counter()
        census = self

        class Dispatch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                name = str(func.overloadpacket.__name__)
                census.ops[name] += 1
                if name in ("_local_scalar_dense", "lift_fresh", "lift_fresh_copy"):
                    census.host[name] += 1
                if name in ("_to_copy", "copy_") and args and isinstance(args[0], torch.Tensor):
                    src = args[1] if name == "copy_" else args[0]
                    dst = args[0].device if name == "copy_" else (kwargs or {}).get("device", src.device)
                    if torch.device(dst) != src.device:
                        census.host[f"{name} {src.device}->{dst}"] += 1
                return func(*args, **(kwargs or {}))

        self.dispatch = Dispatch()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if getattr(func, "__name__", "") in HOST_READS:
            self.host[func.__name__] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):  # noqa: ANN204
        super().__enter__()
        self.dispatch.__enter__()
        return self

    def __exit__(self, *exc):  # noqa: ANN001, ANN002
        self.dispatch.__exit__(*exc)
        return super().__exit__(*exc)


def step_census(members: int, images: DatasetSplits) -> StepCensus:
    configs = [quick(seed=s, rho=0.6 + 0.001 * (s % 256)) for s in range(members)]
    pop = Population(configs, data=images, chunk=members)  # one pass for all members, as on a GPU
    pop.train_step()  # the first step of an epoch prepares the epoch's data order on the host
    with StepCensus() as census:
        pop.train_step()
    return census


def test_a_step_reads_nothing_from_the_device_and_its_ops_do_not_grow_with_the_members(images):
    one, many = step_census(1, images), step_census(64, images)
    assert one.host == Counter() and many.host == Counter(), (one.host, many.host)
    total_one, total_many = sum(one.ops.values()), sum(many.ops.values())
    assert abs(total_many - total_one) <= 0.1 * total_one, (total_one, total_many, many.ops - one.ops)
    assert one.ops["select"] == many.ops["select"]  # no per-member views


def test_a_step_with_a_member_failing_inside_it_stays_on_the_device(images):
    pop = Population([quick(seed=0), quick(seed=1, beta_max=float("inf"), max_skipped_steps=2)], data=images)
    pop.train_step()
    with StepCensus() as census:
        pop.train_step()  # member 1 fails in this step
    assert census.host == Counter()
    assert pop.members[1].active  # the host learns of it only when it reads the counters
    pop.sync_members()
    assert pop.members[1].failure.startswith("TrainingStalled: 2 consecutive steps") and "(step 2," in \
        pop.members[1].failure and pop.members[0].active


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_beta_on_the_device_equals_beta_at(schedule):
    configs = [Config(beta_schedule=schedule, beta_min=lo, beta_max=hi, anneal_epochs=span, n_cycles=3,
                      cycle_ratio=ratio, sigmoid_steepness=steep)
               for lo, hi, span, ratio, steep in ((0.0, 1.0, 10.0, 0.5, 10.0), (0.1, 0.7, 3.3, 0.3, 4.0),
                                                  (0.0, float("inf"), 1.0, 1.0, 20.0))]
    schedules = MemberSchedules(configs, torch.device("cpu"))
    batches = 17
    for step in [*range(0, 400, 7), 10 * batches, 33 * batches, 10**6]:
        epoch = step / batches
        device = schedules.beta(torch.tensor(step, dtype=torch.int64).double() / batches)
        host = torch.tensor([beta_at(c, epoch) for c in configs])  # as the step used to build it
        torch.testing.assert_close(device, host, rtol=0, atol=0, equal_nan=True)  # bit for bit


def test_member_adam_is_adam_for_the_members_that_step_and_leaves_the_others_bit_for_bit():
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(3, 50))
    reference = torch.nn.Parameter(param.detach()[0].clone())
    adam, torch_adam = MemberAdam(param, lr=1e-2), torch.optim.Adam([reference], lr=1e-2)
    frozen = param.detach()[1:].clone()
    for _ in range(5):
        grad = torch.randn(3, 50)
        adam.grad.copy_(grad)
        adam.step(torch.tensor([True, False, False]))
        reference.grad = grad[0].clone()
        torch_adam.step()
    assert torch.allclose(param.detach()[0], reference.detach(), rtol=1e-5, atol=1e-7)
    assert torch.equal(param.detach()[1:], frozen) and adam.steps.tolist() == [5.0, 0.0, 0.0]
    assert torch.equal(adam.exp_avg[1:], torch.zeros(2, 50))


def test_member_adam_decays_each_members_lr_by_its_own_step_count():
    """lr / (1 + k/d) at a member's k-th update, as torch's Adam under that LambdaLR schedule: a member that sat
    out steps continues its own schedule where it stopped (so does a run continued from its checkpoint)."""
    plan = [(True, True), (True, False), (True, False), (True, True), (False, True), (True, True)]
    adam = _member_adam_against_torch_adam(0, 1.0, plan)  # ignoring the decay would be ~1e-2 off
    assert adam.steps.tolist() == [5.0, 4.0]


def _member_adam_against_torch_adam(seed: int, power: float, plan: list[tuple[bool, bool]]) -> MemberAdam:
    """Two members under MemberAdam(decay_steps=2, decay_power=power) stepped by `plan` (which members update), each
    checked against torch's Adam under the LambdaLR schedule lr / (1 + k/2)^power; returns the MemberAdam."""
    torch.manual_seed(seed)
    param = torch.nn.Parameter(torch.randn(2, 30))
    references = [torch.nn.Parameter(param.detach()[i].clone()) for i in range(2)]
    adam = MemberAdam(param, lr=1e-1, decay_steps=2, **({} if power == 1.0 else {"decay_power": power}))
    torch_adams = [torch.optim.Adam([r], lr=1e-1) for r in references]
    schedules = [torch.optim.lr_scheduler.LambdaLR(a, lambda t: (1.0 + (t + 1) / 2) ** -power) for a in torch_adams]
    for update in plan:
        grad = torch.randn(2, 30)
        adam.grad.copy_(grad * torch.tensor(update).unsqueeze(1))
        adam.step(torch.tensor(update))
        for i in (0, 1):
            if update[i]:
                references[i].grad = grad[i].clone()
                torch_adams[i].step()
                schedules[i].step()
    for i in (0, 1):  # float32 rounding of 6 steps of size <= 0.05 is ~1e-6; a step off schedule moves ~1e-2
        torch.testing.assert_close(param.detach()[i], references[i].detach(), rtol=0, atol=1e-5)
    return adam


def test_member_adam_decays_by_a_power_of_its_own_step_count():
    """lr / (1 + k/d)^a at a member's k-th update (a = 0.5 here), as torch's Adam under that LambdaLR schedule;
    a = 1 computes exactly the schedule from before the power existed."""
    _member_adam_against_torch_adam(1, 0.5, [(True, True), (True, False), (False, True), (True, True), (True, True)])
    one, power_one = (MemberAdam(torch.nn.Parameter(torch.ones(1, 4)), lr=0.1, decay_steps=3, **kw)
                      for kw in ({}, {"decay_power": 1.0}))
    for _ in range(4):
        for adam in (one, power_one):
            adam.grad.copy_(torch.full((1, 4), 0.3))
            adam.step(torch.tensor([True]))
    assert torch.equal(one.param, power_one.param)


def compiled_equals_eager(device: str, images: DatasetSplits, tol: float) -> None:
    configs = [quick(seed=s, rho=r, steps=6, device=device) for s, r in ((0, 0.8), (1, 1.0), (2, 0.6))]
    eager = Population(configs, data=images, chunk=len(configs))
    graphed = Population([c.replace(compile_step=True) for c in configs], data=images, chunk=len(configs))
    for _ in range(4):
        a, b = eager.train_step(), graphed.train_step()
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a, b)
    assert torch.allclose(eager.model.flat, graphed.model.flat, rtol=tol, atol=tol)


@pytest.mark.slow
def test_the_compiled_step_equals_the_eager_step_on_a_cpu(images):
    compiled_equals_eager("cpu", images, 1e-4)


# ----- on a GPU (run by benchmarks/gpu_check.py; skipped without CUDA) ------------------------------------------
@pytest.mark.cuda
@cuda
def test_a_population_step_on_cuda_equals_the_cpu_step(images):
    configs = [quick(seed=s, rho=r) for s, r in ((0, 0.8), (1, 1.0), (2, 0.6))]
    cpu = Population([c.replace(device="cpu") for c in configs], data=images, chunk=3)
    gpu = Population([c.replace(device="cuda") for c in configs], data=images, chunk=3)
    for _ in range(3):  # the same images and noise on both devices
        x = cpu.train_x[cpu.batch_indices(cpu.step)]
        noise = cpu.model.draw_noise(x.shape[1], cpu.rho, cpu.generator)
        move = lambda t: None if t is None else t.cuda()  # noqa: E731
        on_gpu = Noise([move(t) for t in noise.eps], [move(t) for t in noise.encoders],
                       [move(t) for t in noise.decoders], move(noise.decode_x))
        a, b = cpu._compute_and_update(x, [noise]), gpu._compute_and_update(x.cuda(), [on_gpu])
        cpu.step += 1
        gpu.step += 1
        assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-3), (a, b)
    assert torch.allclose(cpu.model.flat, gpu.model.flat.cpu(), rtol=1e-3, atol=1e-5)


@pytest.mark.cuda
@cuda
def test_the_graphed_step_equals_the_eager_step_on_cuda(images):
    compiled_equals_eager("cuda", images, 1e-4)


@pytest.mark.cuda
@cuda
def test_a_nan_member_is_isolated_on_cuda(images):
    configs = [quick(seed=0, device="cuda"), quick(seed=1, beta_max=math.inf, max_skipped_steps=5, device="cuda")]
    rows: list[dict] = []
    pop = Population(configs, callback=lambda p, r: rows.extend(r), data=images)
    final = pop.fit()
    assert final[0]["is_final"] and final[0]["failure"] is None and math.isfinite(final[0]["elbo"])
    assert final[1]["failure"].startswith("TrainingStalled: 5 consecutive steps")
    alone = Population(configs[1:], data=images)
    assert torch.equal(pop.model.flat[1], alone.model.flat[0])  # frozen where it started
