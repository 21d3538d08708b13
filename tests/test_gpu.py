"""GPU kernels against their NumPy twins, and AlexNet on the GPU against the CPU.

These need CuPy and a CUDA device; elsewhere they are skipped with the reason
printed (pytest -rs).  Run them on a GPU machine with:  python -m pytest -rs -m gpu tests
"""

import numpy as np
import pytest

import tinynet as tn
import tinynet.functional as F
from tinynet.backend import cupy_or_none
from tinynet.ops import cpu_kernels

from conftest import load_example


def _gpu_reason():
    cp = cupy_or_none()
    if cp is None:
        return "CuPy is not installed (pip install -e .[gpu-cuda12] or .[gpu-cuda13])"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return "CuPy is installed but there is no CUDA device"
    except Exception as e:  # no driver
        return f"CuPy is installed but CUDA is not usable: {e}"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

# odd sizes on purpose: nothing divides a block size
CONV_CASES = [((2, 3, 13, 11), 3, 2, 1), ((1, 5, 7, 9), 2, 3, 0), ((3, 4, 31, 31), 11, 4, 0),
              ((2, 6, 27, 27), 5, 1, 2)]


@pytest.fixture
def cp():
    return cupy_or_none()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", CONV_CASES)
def test_im2col_col2im_match_numpy(cp, shape, k, s, p, dtype):
    from tinynet.cuda import kernels

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    cols = cpu_kernels.im2col(x, k, k, (s, s), (p, p))
    cols_gpu = kernels.im2col(cp.asarray(x), k, k, (s, s), (p, p))
    np.testing.assert_array_equal(cp.asnumpy(cols_gpu), cols)
    back = cpu_kernels.col2im(cols, shape, k, k, (s, s), (p, p))
    back_gpu = kernels.col2im(cols_gpu, shape, k, k, (s, s), (p, p))
    np.testing.assert_allclose(cp.asnumpy(back_gpu), back, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 55, 55), (1, 7, 13, 13), (3, 2, 9, 17)])
def test_maxpool_matches_numpy_including_ties(cp, shape, dtype):
    from tinynet.cuda import kernels

    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, shape).astype(dtype)  # many ties: first-maximum rule must agree
    oh, ow = (shape[2] - 3) // 2 + 1, (shape[3] - 3) // 2 + 1
    y, argmax = cpu_kernels.maxpool_forward(x, 3, 3, 2, 2, oh, ow)
    y_gpu, argmax_gpu = kernels.maxpool_forward(cp.asarray(x), 3, 3, 2, 2, oh, ow)
    np.testing.assert_array_equal(cp.asnumpy(y_gpu), y)
    np.testing.assert_array_equal(cp.asnumpy(argmax_gpu), argmax)  # the first maximum, as on the CPU
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = cpu_kernels.maxpool_backward(argmax, gy, x.shape, 3, 3, 2, 2)
    gx_gpu = kernels.maxpool_backward(argmax_gpu, cp.asarray(gy), x.shape, 3, 3, 2, 2)
    # A pixel that is the maximum of several windows sums their gradients; the kernel gathers
    # them in the windows' row-major order, the order in which the CPU's scatter adds them, so
    # the sums are the same bits.
    np.testing.assert_array_equal(cp.asnumpy(gx_gpu), gx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,alpha", [(5, 1e-4), (5, 1.0), (4, 0.5), (3, 2.0)])
def test_lrn_matches_numpy(cp, size, alpha, dtype):
    from tinynet.cuda import kernels

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 11, 5, 7)).astype(dtype)
    y = cpu_kernels.lrn_forward(x, size, alpha, 0.75, 2.0)
    y_gpu = kernels.lrn_forward(cp.asarray(x), size, alpha, 0.75, 2.0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y, rtol=tol, atol=tol)
    gy = rng.standard_normal(x.shape).astype(dtype)
    gx = cpu_kernels.lrn_backward(x, gy, size, alpha, 0.75, 2.0)
    gx_gpu = kernels.lrn_backward(cp.asarray(x), cp.asarray(gy), size, alpha, 0.75, 2.0)
    np.testing.assert_allclose(cp.asnumpy(gx_gpu), gx, rtol=tol * 10, atol=tol)


def _alexnet_pass(dtype, device, x, labels):
    """Logits (with dropout off) and every parameter's gradient of one pass, as NumPy arrays."""
    from tinynet.models import AlexNet

    model = AlexNet(10, bias_init="caffe", dropout=0.0, seed=11, dtype=dtype).eval()
    xp = np
    if device != "cpu":
        model.to(device)
        xp = cupy_or_none()
    logits = model(tn.tensor(xp.asarray(x.astype(dtype))))
    F.cross_entropy(logits, xp.asarray(labels)).backward()
    host = (lambda a: a) if xp is np else xp.asnumpy
    return host(logits.data), {name: host(p.grad) for name, p in model.named_parameters()}


def _relative(a, ref):
    return float(np.linalg.norm(a.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-300))


def test_alexnet_forward_backward_gpu_matches_cpu(cp):
    """In float64 the GPU's logits and every gradient equal the CPU's to rounding (im2col and
    cuBLAS against the CPU's Winograd and OpenBLAS: other summation orders).  In float32 only
    the logits are compared: a max-pool's choice between two values 1e-8 apart is rounding's
    to make, and one such choice moves every gradient below it.  (Measured on the CPU alone,
    these inputs: in float32, pool5's input holds 0.13359751 twice where float64 has
    0.1335975 and 0.13359751, and with that one flip conv1's weight gradient is 8e-3 from
    float64's by norm.)"""
    rng = np.random.default_rng(3)
    x, labels = rng.standard_normal((4, 3, 227, 227)), np.arange(4) % 10
    logits64, grads64 = _alexnet_pass(np.float64, "cpu", x, labels)
    logits_g, grads_g = _alexnet_pass(np.float64, "cuda:0", x, labels)
    assert _relative(logits_g, logits64) <= 1e-12
    errors = {name: _relative(grads_g[name], grads64[name]) for name in grads64}
    assert max(errors.values()) <= 1e-10, errors
    logits32, _ = _alexnet_pass(np.float32, "cuda:0", x, labels)
    assert _relative(logits32, logits64) <= 1e-5


def test_a_few_training_steps_on_the_gpu(cp):
    from tinynet.models import AlexNet

    tn.manual_seed(0)
    model = AlexNet(10, bias_init="caffe").to("cuda:0")
    opt = tn.optim.SGD(model.parameters(), lr=0.01)
    x = tn.tensor(cp.asarray(np.random.default_rng(4).standard_normal((8, 3, 227, 227)).astype(np.float32)))
    y = cp.arange(8) % 10
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))


def test_two_towers_on_one_gpu_match_one_device(cp):
    """TINYNET_DEVICES=0,0: both towers on GPU 0, one stream each, against the grouped model
    on the same GPU (float64, so only summation order can differ)."""
    from tinynet.models import AlexNet

    grouped = AlexNet(10, bias_init="caffe", seed=7, dtype=np.float64).eval()
    split = AlexNet(10, bias_init="caffe", seed=7, dtype=np.float64,
                    towers=tn.backend.tower_devices("cuda", "0,0")).eval()
    grouped.to("cuda:0")
    x = cp.asarray(np.random.default_rng(5).standard_normal((2, 3, 227, 227)))
    labels = cp.asarray(np.array([3, 8]))
    loss_g = F.cross_entropy(grouped(tn.tensor(x)), labels)
    loss_s = F.cross_entropy(split(tn.tensor(x)), labels)
    assert abs(loss_g.item() - loss_s.item()) <= 1e-10 * abs(loss_g.item())
    loss_g.backward()
    loss_s.backward()
    joined = {k: np.concatenate([cp.asnumpy(a.grad), cp.asnumpy(b.grad)])
              for (k, a), (_, b) in zip(split.tower0.named_parameters(), split.tower1.named_parameters())}
    for name, p in grouped.named_parameters():
        g = cp.asnumpy(p.grad)
        np.testing.assert_allclose(joined[name], g, rtol=1e-8, atol=1e-12 * np.abs(g).max(), err_msg=name)
    assert split.traffic.forward_bytes > 0 and split.traffic.backward_bytes > 0


@pytest.mark.parametrize("towers", ["1", "2"])
def test_training_program_on_the_gpu(cp, tmp_path, towers, monkeypatch):
    monkeypatch.setenv("TINYNET_DEVICES", "0,0")
    prog = load_example("alexnet_train")
    result = prog.main(["--preset", "demo", "--max-train-images", "16", "--max-val-images", "8",
                        "--batch-size", "4", "--device", "cuda", "--towers", towers,
                        "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert 0.0 <= result["top1_err"] <= 1.0
