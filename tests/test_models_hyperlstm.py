"""HyperLSTM: closed-form counts, equivalence to LSTM / LN-LSTM at initialisation, state carry, gradients,
and its implementations (eager loop, fused sequence with PyTorch or C++ cell loops) against each other."""

import shutil

import pytest
import torch

from hyperlab.models import LSTM, HyperLSTM, LayerNormLSTM, _ext, hyperlstm_fused, paper_torch_lstm

from conftest import assert_same_results, needs_cpp_loops, perturb, run_implementations

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only synchronise


def hyper_count(n_x, n_h, n_hh, n_z, layer_norm):
    """PAPER.md section 1, one layer."""
    p = 4 * n_h * (n_x + n_h + 1) + 4 * n_hh * (n_x + n_h + n_hh + 1) + 12 * n_z * (n_hh + n_h) + 8 * n_z
    return p + (10 * n_h + 10 * n_hh if layer_norm else 0)


def n_params(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("seed", range(4))
def test_parameter_count_closed_form(seed):
    g = torch.Generator().manual_seed(seed)
    n_x, n_h, n_hh, n_z, layers = (int(v) for v in torch.randint(1, 40, (5,), generator=g))
    layers = layers % 3 + 1
    for ln in (False, True):
        model = HyperLSTM(n_x, n_h, n_hh, n_z, num_layers=layers, layer_norm=ln)
        expected = hyper_count(n_x, n_h, n_hh, n_z, ln) + (layers - 1) * hyper_count(n_h, n_h, n_hh, n_z, ln)
        assert n_params(model) == expected
    assert n_params(LayerNormLSTM(n_x, n_h)) == 4 * n_h * (n_x + n_h) + 10 * n_h
    assert n_params(LSTM(n_x, n_h)) == 4 * n_h * (n_x + n_h + 1)
    assert n_params(paper_torch_lstm(n_x, n_h)) == 4 * n_h * (n_x + n_h + 1)


def _torch_order(w, n_h):
    """(i, g, f, o) rows -> torch's (i, f, g, o)."""
    i, g, f, o = w.split(n_h, 0)
    return torch.cat([i, f, g, o])


def test_initial_hyperlstm_is_plain_lstm():
    torch.manual_seed(0)
    n_x, n_h, n_layers = 5, 7, 2
    model = HyperLSTM(n_x, n_h, hyper_size=6, n_z=3, num_layers=n_layers)
    ref = torch.nn.LSTM(n_x, n_h, n_layers)
    with torch.no_grad():
        for n, cell in enumerate(model.layers):
            getattr(ref, f"weight_ih_l{n}").copy_(_torch_order(0.1 * cell.weight_x, n_h))
            getattr(ref, f"weight_hh_l{n}").copy_(_torch_order(0.1 * cell.weight_h, n_h))
            bias = torch.zeros(4 * n_h)
            bias[n_h:2 * n_h] = 1.0  # forget bias 1
            getattr(ref, f"bias_ih_l{n}").copy_(bias)
            getattr(ref, f"bias_hh_l{n}").zero_()
    x = torch.randn(9, 4, n_x)
    out, (h, c, _, _) = model(x)
    ref_out, (ref_h, ref_c) = ref(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=1e-6)


def reference_ln_lstm(x, w_x, w_h, eps=1e-3):
    """Layer-norm LSTM written out gate by gate (no gate bias, gamma 1, beta 0), x (T, B, N)."""
    n_h = w_h.shape[1]
    h = c = x.new_zeros(x.shape[1], n_h)
    norm = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + eps)
    outs = []
    for x_t in x:
        pre = x_t @ w_x.t() + h @ w_h.t()
        i, g, f, o = (norm(p) for p in pre.split(n_h, 1))
        c = torch.sigmoid(f + 1) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(norm(c))
        outs.append(h)
    return torch.stack(outs)


def test_initial_ln_hyperlstm_is_ln_lstm():
    torch.manual_seed(1)
    model = HyperLSTM(5, 8, hyper_size=6, n_z=2, layer_norm=True)
    cell = model.layers[0]
    x = torch.randn(7, 3, 5)
    expected = reference_ln_lstm(x, 0.1 * cell.weight_x, 0.1 * cell.weight_h)
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-5, atol=1e-5)
    ln_lstm = LayerNormLSTM(5, 8)
    layer = ln_lstm.layers[0]
    torch.testing.assert_close(ln_lstm(x)[0], reference_ln_lstm(x, layer.weight_x, layer.weight_h),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_chunked_sequence_equals_one_call(layer_norm):
    torch.manual_seed(2)
    model = HyperLSTM(4, 6, hyper_size=5, n_z=3, num_layers=2, layer_norm=layer_norm)
    perturb(model)
    x = torch.randn(12, 3, 4)
    full, full_state = model(x)
    first, state = model(x[:5])
    second, state = model(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), full)
    for a, b in zip(state, full_state):
        torch.testing.assert_close(a, b)


def test_hypernetwork_changes_scales_after_perturbation():
    torch.manual_seed(3)
    model = HyperLSTM(4, 6, hyper_size=5, n_z=3)
    x = torch.randn(5, 2, 4)
    _, _, scales = model(x, return_scales=True)
    assert scales[0]["d_x"].shape == (5, 2, 4, 6)
    torch.testing.assert_close(scales[0]["d_h"], torch.full((5, 2, 4, 6), 0.1))
    perturb(model)
    _, _, scales = model(x, return_scales=True)
    assert scales[0]["d_h"].std() > 0.01


def test_gradcheck_float64():
    """Without layer norm this checks the hand-written backward; with it, autograd through the eager loop."""
    torch.manual_seed(4)
    for ln in (False, True):
        model = HyperLSTM(3, 4, hyper_size=3, n_z=2, layer_norm=ln).double()
        perturb(model)
        cell = model.layers[0]
        x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
        hyper_c0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
        zeros = lambda n: torch.zeros(1, 2, n, dtype=torch.float64)

        def run(x, h0, hyper_c0, *weights):
            out, state = model(x, (h0, zeros(4), zeros(3), hyper_c0))
            return out, state[1], state[2]

        weights = (cell.weight_h, cell.weight_scale, cell.weight_z, cell.bias_z, cell.hyper.weight_h,
                   cell.hyper.weight_x, cell.bias)
        assert torch.autograd.gradcheck(run, (x, h0, hyper_c0, *weights), fast_mode=True)


def test_batch_first_equals_transposed_call():
    torch.manual_seed(5)
    model = HyperLSTM(4, 6, hyper_size=5, n_z=2)
    perturb(model)
    model_bf = HyperLSTM(4, 6, hyper_size=5, n_z=2, batch_first=True)
    model_bf.load_state_dict(model.state_dict())
    x = torch.randn(7, 3, 4)
    out, state = model(x)
    out_bf, state_bf = model_bf(x.transpose(0, 1))
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    torch.testing.assert_close(state_bf[0], state[0])


def test_recurrent_dropout_only_in_training():
    torch.manual_seed(6)
    model = HyperLSTM(4, 6, hyper_size=5, n_z=2, dropout=0.5)
    plain = HyperLSTM(4, 6, hyper_size=5, n_z=2)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(6, 3, 4)
    model.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0])
    model.train()
    assert (model(x)[0] - plain(x)[0]).abs().max() > 1e-3


def test_cell_rejects_wrong_input_width():
    with pytest.raises(ValueError, match=r"\(T, B, 4\)"):
        HyperLSTM(4, 6)(torch.randn(3, 2, 5))


def test_extension_builds_with_a_toolchain(monkeypatch):
    """The C++ cell loops load where g++ and ninja exist (so the tests below run them); the environment
    variable forces the PyTorch code."""
    if shutil.which("g++") is None or shutil.which("ninja") is None:
        pytest.skip("no g++ or ninja: the PyTorch code is the only path")
    monkeypatch.delenv("HYPERLAB_NO_EXTENSION", raising=False)
    assert _ext.kernels.__wrapped__() is not None  # uncached: built, or loaded from torch's cache
    monkeypatch.setenv("HYPERLAB_NO_EXTENSION", "1")
    assert _ext.kernels.__wrapped__() is None


def _hyperlstm(dtype, dropout=0.3, **sizes):
    """A factory for ``run_implementations``: the same perturbed 2-layer HyperLSTM for every impl."""
    def build(impl):
        torch.manual_seed(7)
        return perturb(HyperLSTM(5, 8, hyper_size=6, n_z=3, num_layers=2, dropout=dropout, impl=impl, **sizes)
                       .to(dtype), seed=3)
    return build


@pytest.mark.parametrize("dtype,scratch_bytes,batch,cpp", [
    (torch.float32, None, 4, True), (torch.float32, None, 43, True), (torch.float64, None, 43, True),
    (torch.float64, 1, 4, True), (torch.float64, 7000, 4, True), (torch.float32, None, 43, False),
    (torch.float64, 7000, 4, False)])
def test_fused_sequence_equals_eager_reference(dtype, scratch_bytes, batch, cpp, monkeypatch):
    """The hand-written backward (HyperLSTMSequence) against autograd through the eager loop:
    outputs, final states and every gradient, with recurrent dropout on (same masks) and 2 layers.
    ``scratch_bytes`` shrinks the backward's chunks: one step each (1), 2 steps and a last one of 1 (7000).
    Batch 43 takes the C++ loops through all their column blocks (4 SIMD groups, single groups, single
    columns, for 8 floats or 4 doubles a group); ``cpp`` False forces the PyTorch cell code (as
    without a compiler, or with HYPERLAB_NO_EXTENSION=1)."""
    if cpp:
        needs_cpp_loops()
    else:
        monkeypatch.setattr(_ext, "kernels", lambda: None)
    if scratch_bytes is not None:
        monkeypatch.setattr(hyperlstm_fused._Backward, "SCRATCH_BYTES", scratch_bytes)
    x = torch.randn(7, batch, 5, dtype=dtype, requires_grad=True)
    state = tuple(torch.randn(2, batch, n, dtype=dtype, requires_grad=True) for n in (8, 8, 6, 6))
    results = run_implementations(_hyperlstm(dtype), x, state)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert_same_results(results["fused"], results["eager"], **tol)


@pytest.mark.slow
def test_fused_equals_eager_at_benchmark_size():
    """The benchmark's sizes (N_x 64, H 512, Ĥ 64, N_z 4, B 32), 20 steps, float32 (oneDNN products).
    Perturbed gently: with large random weights the recurrence is chaotic and amplifies rounding."""
    def build(impl):
        torch.manual_seed(10)
        return perturb(HyperLSTM(64, 512, hyper_size=64, n_z=4, impl=impl), scale=0.02, seed=11)

    results = run_implementations(build, torch.randn(20, 32, 64), None)
    (out_f, _, grads_f), (out_e, _, grads_e) = results["fused"], results["eager"]
    torch.testing.assert_close(out_f, out_e, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_f, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_fused_path_trains_like_the_eager_loop_when_gates_saturate(fit_batch):
    """Adam at a high learning rate drives the gates into saturation (pre-activations of tens): the
    fused sequence must stay finite and follow the eager loop step by step while training."""
    from hyperlab.models import CharRNN

    def losses(impl: str, steps: int) -> list[float]:
        torch.manual_seed(0)
        model = CharRNN(vocab_size=10, cell="hyperlstm", hidden_size=16, hyper_size=7, n_z=1, impl=impl)
        tokens = torch.randint(0, 10, (8, 17), generator=torch.Generator().manual_seed(1))
        return fit_batch(model, tokens, lr=0.05, steps=steps)

    fused = losses("fused", 60)
    assert all(v == v and abs(v) != float("inf") for v in fused)
    assert fused[-1] < 0.5 * fused[0]  # it learns the fixed batch
    assert fused[:20] == pytest.approx(losses("eager", 20), rel=1e-3)  # later, float32 rounding compounds


@pytest.mark.slow
def test_extension_build_survives_a_killed_build_and_concurrent_builders(tmp_path):
    """A build killed midway (a Ray trial stopped while compiling) leaves torch's lock file behind; the
    next builds must neither hang on it nor trip over each other: three at once, all load the module."""
    import os
    import subprocess
    import sys
    import time

    if shutil.which("g++") is None or shutil.which("ninja") is None:
        pytest.skip("no g++ or ninja")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop("HYPERLAB_NO_EXTENSION", None)
    code = "from hyperlab.models import _ext; print(_ext.kernels() is not None)"
    killed = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/lock")) and time.time() < deadline:
        time.sleep(0.2)
    killed.kill()
    killed.wait()
    assert list(tmp_path.glob("*/lock")), "the build never started"
    builders = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(3)]
    assert [b.communicate(timeout=600)[0].strip() for b in builders] == ["True"] * 3


def test_forward_buffers_return_to_the_pool_only_when_their_graph_is_gone():
    """The fused forward's buffers come from a pool and go back when the graph is freed: two graphs alive
    at once get separate buffers (each backward still equals the eager loop's), and a freed graph's buffer
    serves the next call, which computes the same output again."""
    def build(impl):
        torch.manual_seed(7)
        return perturb(HyperLSTM(5, 8, hyper_size=6, n_z=3, impl=impl).double(), seed=3)

    fused, eager = build("fused"), build("eager")
    pool = hyperlstm_fused._pool
    pool.free.clear()
    xs = [torch.randn(7, 1, 5, dtype=torch.float64) for _ in range(2)]

    def gradients(model, x):
        out, state = model(x)
        return out, state, torch.autograd.grad(out.sum() + state[1].sum(), list(model.parameters()))

    first, second = gradients(fused, xs[0]), gradients(fused, xs[1])  # both graphs alive until here
    for result, x in zip((first, second), xs):
        assert_same_results(result, gradients(eager, x), rtol=1e-12, atol=1e-12)
    assert not pool.free  # autograd.grad frees the graph only when the outputs go
    kept = first[0].detach().clone()
    del first, second, result
    assert len(pool.free) == 1  # two buffers of one size came back; one is kept
    with torch.no_grad():
        fused(xs[1])
    assert len(pool.free) == 1  # taken and, with no graph, returned at once
    torch.testing.assert_close(gradients(fused, xs[0])[0], kept, rtol=0, atol=0)
