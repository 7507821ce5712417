"""Static hypernetwork: shared generator, tiling, MNIST and WRN counts, compression ratio."""

import pytest
import torch

from hyperlab.models import GeneratedConv2d, KernelGenerator, MnistConvNet, WideResNet, parameter_report

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only synchronise


def generator_count(n_z, f, tile=16):
    """PAPER.md section 2: d(N_z + 1)·N_in + f·N_out·f·(d + 1), d = N_z."""
    return n_z * (n_z + 1) * tile + f * tile * f * (n_z + 1)


def test_generated_kernel_shape_and_tiling():
    torch.manual_seed(0)
    gen = KernelGenerator(n_z=5, kernel_size=3)
    conv = GeneratedConv2d(gen, in_channels=64, out_channels=32)
    assert conv.z.shape == (2, 4, 5)  # 8 embeddings for a 32x64 kernel
    kernel = conv.kernel()
    assert kernel.shape == (32, 64, 3, 3)
    for r in range(2):
        for s in range(4):
            block = kernel[16 * r:16 * (r + 1), 16 * s:16 * (s + 1)]
            torch.testing.assert_close(block, gen(conv.z[r, s]))


def test_generator_is_linear_in_z_without_relu():
    """K(z) = W_out (W_i z + B_i) + B_out: affine, so K(a) + K(b) - K(0) = K(a + b); no ReLU anywhere."""
    torch.manual_seed(1)
    gen = KernelGenerator(n_z=4, kernel_size=7)
    with torch.no_grad():
        gen.bias_in.normal_()
        gen.bias_out.normal_()
    a, b = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(gen(a) + gen(b) - gen(torch.zeros(4)), gen(a + b), rtol=1e-4, atol=1e-5)
    assert (gen(-10 * a) < 0).any()
    assert sum(p.numel() for p in gen.parameters()) == generator_count(4, 7)


def test_mnist_conv2_counts_and_compression():
    hyper, plain = MnistConvNet(hyper=True, n_z=4), MnistConvNet()
    report = parameter_report(hyper)
    assert report["generator"] == 4240 and report["embeddings"] == 4
    assert report["generated_layers_with_hyper"] == 4244
    assert report["generated_layers_without_hyper"] == 7 * 7 * 16 * 16 == 12544
    assert round(report["compression_ratio"], 3) == 0.338
    # everything else (conv1, conv biases, fc) is the same in both
    assert parameter_report(plain)["total"] - report["total"] == 12544 - 4244
    assert parameter_report(plain)["compression_ratio"] is None
    assert hyper(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def wrn_count(depth, widen, classes=10):
    """Pre-activation WRN with 1x1 projection shortcuts: convs, batch norms (2 per channel), classifier."""
    n, (w1, w2, w3) = (depth - 4) // 6, (16 * widen, 32 * widen, 64 * widen)
    convs = 3 * 16 * 9
    bn_channels = 0
    inputs = 16
    for width in (w1, w2, w3):
        convs += 9 * (inputs * width + (n - 1) * width * width) + 9 * n * width * width
        convs += inputs * width if inputs != width else 0
        bn_channels += inputs + (n - 1) * width + n * width
        inputs = width
    return convs + 2 * (bn_channels + w3) + w3 * classes + classes


def test_wide_resnet_counts():
    wrn1, wrn2 = WideResNet(40, 1), WideResNet(40, 2)
    assert parameter_report(wrn1)["total"] == wrn_count(40, 1) == 563930   # paper: 0.563M
    assert parameter_report(wrn2)["total"] == wrn_count(40, 2) == 2243546  # paper: 2.236M (0.3% apart)
    hyper = WideResNet(40, 1, hyper=True, n_z=64)
    report = parameter_report(hyper)
    assert report["generator"] == generator_count(64, 3) == 75920
    tiles = 12 * 1 + (2 + 11 * 4) + (8 + 11 * 16)  # 16x16 tiles of the 36 generated kernels
    assert report["embeddings"] == 64 * tiles
    generated = [m for m in hyper.modules() if isinstance(m, GeneratedConv2d)]
    assert len(generated) == 36 and all(m.generator is hyper.generator for m in generated)
    assert report["total"] == 97770  # paper: about 0.097M
    assert report["ordinary"] == wrn_count(40, 1) - report["generated_layers_without_hyper"]
    assert hyper(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wide_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=41)
