"""The models on a CUDA device: the same numbers as on the CPU. Skipped where no GPU is present (as on CI)."""

import pytest
import torch

from hyperlab.models import CharRNN, HyperLSTM, MnistConvNet, WideResNet, parameter_report

from conftest import assert_same_results, perturb, run_implementations

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_equals_eager_on_cuda(dtype):
    """The fused sequence (torch ops on the GPU) against autograd through the eager loop, dropout on."""
    def build(impl):
        torch.manual_seed(7)
        return perturb(HyperLSTM(5, 8, hyper_size=6, n_z=3, num_layers=2, dropout=0.3, impl=impl)
                       .to("cuda", dtype), scale=0.1, seed=3)

    x = torch.randn(7, 43, 5, dtype=dtype, device="cuda", requires_grad=True)
    state = tuple(torch.randn(2, 43, n, dtype=dtype, device="cuda", requires_grad=True) for n in (8, 8, 6, 6))
    results = run_implementations(build, x, state)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert_same_results(results["fused"], results["eager"], **tol)


def test_cuda_equals_cpu_in_float64():
    """One model, its copy on the GPU: outputs, states and gradients agree (no dropout: the RNGs differ)."""
    torch.manual_seed(7)
    cpu = perturb(HyperLSTM(5, 8, hyper_size=6, n_z=3, num_layers=2).double(), scale=0.1, seed=3)
    gpu = HyperLSTM(5, 8, hyper_size=6, n_z=3, num_layers=2).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(9, 11, 5, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(2, 11, n, dtype=torch.float64, requires_grad=True) for n in (8, 8, 6, 6))
    x_gpu = x.detach().cuda().requires_grad_()
    state_gpu = tuple(s.detach().cuda().requires_grad_() for s in state)
    on_cpu = run_implementations(lambda impl: cpu, x, state, impls=("fused",))["fused"]
    on_gpu = run_implementations(lambda impl: gpu, x_gpu, state_gpu, impls=("fused",))["fused"]
    assert_same_results(tuple(t.cpu() for t in (on_gpu[0], *on_gpu[1], *on_gpu[2])),
                        (on_cpu[0], *on_cpu[1], *on_cpu[2]), rtol=1e-10, atol=1e-10)


def _train(model, batch, steps: int = 12) -> list[float]:
    """Adam on one fixed batch; the loss of every step."""
    if isinstance(model, CharRNN):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        loss_of = lambda: torch.nn.functional.cross_entropy(model(inputs)[0].flatten(0, 1), targets.flatten())
    else:
        images, labels = batch
        loss_of = lambda: torch.nn.functional.cross_entropy(model(images), labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("build", [
    lambda: CharRNN(50, "lstm", 32), lambda: CharRNN(50, "ln_lstm", 32),
    lambda: CharRNN(50, "hyperlstm", 32, hyper_size=16, n_z=4), lambda: CharRNN(50, "ln_hyperlstm", 32, 16, 4),
    lambda: MnistConvNet(hyper=True, n_z=4), lambda: WideResNet(depth=10, widen=1, hyper=True, n_z=16)],
    ids=["lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm", "mnist_hyper", "hyper_wrn_10"])
def test_models_train_on_cuda_as_on_cpu(build):
    """Each model in float64, trained on one batch on the CPU and, from the same start, on the GPU: the
    same parameter count and the same losses step by step (cuDNN's LSTM and convolutions included)."""
    torch.manual_seed(0)
    cpu = build().double()
    gpu = build().double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    assert parameter_report(gpu)["total"] == parameter_report(cpu)["total"]
    generator = torch.Generator().manual_seed(1)
    if isinstance(cpu, CharRNN):
        batch = torch.randint(0, 50, (8, 33), generator=generator)
        gpu_batch = batch.cuda()
    else:
        size, channels = (28, 1) if isinstance(cpu, MnistConvNet) else (32, 3)
        batch = (torch.randn(16, channels, size, size, generator=generator, dtype=torch.float64),
                 torch.randint(0, 10, (16,), generator=generator))
        gpu_batch = tuple(t.cuda() for t in batch)
    on_cpu, on_gpu = _train(cpu, batch), _train(gpu, gpu_batch)
    assert on_gpu == pytest.approx(on_cpu, rel=1e-6)
    assert on_cpu[-1] < on_cpu[0]
