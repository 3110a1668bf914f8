"""RoIAlign: the vectorised implementation against a scalar transcription of torchvision's kernel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmfo1.modeling import roi_align as roi_align_module
from vlmfo1.modeling.roi_align import roi_align, roi_align_backend, roi_align_torch


# --------------------------------------------------------------------------------------------
# Independent reference: one box, one bin, one sample at a time, in the given numpy float type.
# It lists every (box, bin, feature cell, weight) contribution; forward sums them against the
# features, backward scatters the output gradient through the same list.
# --------------------------------------------------------------------------------------------
def reference_contributions(rois, height, width, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned, real):
    contributions = []  # (roi, batch, ph, pw, y, x, weight / count)
    scale = real(spatial_scale)
    offset = real(0.5) if aligned else real(0.0)
    for k, roi in enumerate(rois):
        batch = int(roi[0])
        x1, y1, x2, y2 = (real(v) for v in roi[1:])
        start_w = x1 * scale - offset
        start_h = y1 * scale - offset
        roi_w = (x2 * scale - offset) - start_w
        roi_h = (y2 * scale - offset) - start_h
        if not aligned:
            roi_w = max(roi_w, real(1.0))
            roi_h = max(roi_h, real(1.0))
        bin_h = roi_h / real(pooled_h)
        bin_w = roi_w / real(pooled_w)
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / real(pooled_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / real(pooled_w))
        count = real(max(grid_h * grid_w, 1))
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                for iy in range(grid_h):
                    y = start_h + real(ph) * bin_h + (real(iy) + real(0.5)) * bin_h / real(grid_h)
                    for ix in range(grid_w):
                        x = start_w + real(pw) * bin_w + (real(ix) + real(0.5)) * bin_w / real(grid_w)
                        if y < -1.0 or y > height or x < -1.0 or x > width:
                            continue
                        yc = real(0.0) if y <= 0 else y
                        xc = real(0.0) if x <= 0 else x
                        y_low, x_low = int(yc), int(xc)
                        if y_low >= height - 1:
                            y_low = y_high = height - 1
                            yc = real(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_low = x_high = width - 1
                            xc = real(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = yc - real(y_low), xc - real(x_low)
                        hy, hx = real(1.0) - ly, real(1.0) - lx
                        for cy, cx, w in (
                            (y_low, x_low, hy * hx),
                            (y_low, x_high, hy * lx),
                            (y_high, x_low, ly * hx),
                            (y_high, x_high, ly * lx),
                        ):
                            contributions.append((k, batch, ph, pw, cy, cx, w / count))
    return contributions


def reference_forward(features, rois, pooled, spatial_scale, sampling_ratio, aligned):
    real = features.dtype.type
    _, c, h, w = features.shape
    out = np.zeros((len(rois), c, pooled[0], pooled[1]), dtype=features.dtype)
    for k, b, ph, pw, y, x, weight in reference_contributions(
        rois, h, w, pooled[0], pooled[1], spatial_scale, sampling_ratio, aligned, real
    ):
        out[k, :, ph, pw] += weight * features[b, :, y, x]
    return out


def reference_input_gradient(features_shape, grad_output, rois, pooled, spatial_scale, sampling_ratio, aligned):
    real = grad_output.dtype.type
    h, w = features_shape[2:]
    grad = np.zeros(features_shape, dtype=grad_output.dtype)
    for k, b, ph, pw, y, x, weight in reference_contributions(
        rois, h, w, pooled[0], pooled[1], spatial_scale, sampling_ratio, aligned, real
    ):
        grad[b, :, y, x] += weight * grad_output[k, :, ph, pw]
    return grad


def random_rois(generator, num, image_h, image_w, num_images):
    """Boxes in image coordinates: inside, partly outside, fully outside, tiny, inverted."""

    def uniform(low, high, size):
        return low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)

    x1 = uniform(-0.4 * image_w, 1.2 * image_w, num)
    y1 = uniform(-0.4 * image_h, 1.2 * image_h, num)
    kind = torch.randint(0, 4, (num,), generator=generator)
    # kind 0: ordinary, 1: tiny (< 1 feature cell), 2: large, 3: inverted (x2 < x1 or y2 < y1)
    span_w = torch.where(kind == 1, uniform(0, 2, num), uniform(2, 0.6 * image_w, num))
    span_h = torch.where(kind == 1, uniform(0, 2, num), uniform(2, 0.6 * image_h, num))
    span_w = torch.where(kind == 2, span_w * 2, span_w)
    span_h = torch.where(kind == 3, -uniform(0, 5, num), span_h)
    batch = torch.randint(0, num_images, (num,), generator=generator).double()
    return torch.stack([batch, x1, y1, x1 + span_w, y1 + span_h], dim=1)


# (spatial scale, feature map H, W): the image is about H / scale x W / scale pixels.
SCALES = [(1.0, 9, 11), (0.25, 10, 13), (1 / 14, 6, 7)]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
@pytest.mark.parametrize("spatial_scale,height,width", SCALES)
def test_forward_matches_scalar_reference(aligned, sampling_ratio, spatial_scale, height, width):
    generator = torch.Generator().manual_seed(hash((aligned, sampling_ratio, height)) % 2**31)
    features = torch.randn(2, 3, height, width, generator=generator, dtype=torch.float64)
    rois = random_rois(generator, 40, height / spatial_scale, width / spatial_scale, num_images=2)
    pooled = (7, 5)
    expected = reference_forward(features.numpy(), rois.tolist(), pooled, spatial_scale, sampling_ratio, aligned)

    # fp64: only summation order differs from the reference.
    actual64 = roi_align_torch(features, rois, pooled, spatial_scale, sampling_ratio, aligned)
    np.testing.assert_allclose(actual64.numpy(), expected, rtol=0, atol=1e-12)

    # fp32: coordinates are computed in fp32 exactly as the kernel does.
    expected32 = reference_forward(
        features.float().numpy(), rois.float().tolist(), pooled, spatial_scale, sampling_ratio, aligned
    )
    actual32 = roi_align(features.float(), rois.float(), pooled, spatial_scale, sampling_ratio, aligned)
    assert actual32.dtype == torch.float32
    np.testing.assert_allclose(actual32.numpy(), expected32, rtol=0, atol=2e-6)
    assert np.abs(expected32).max() > 0.1  # the boxes really sample the map


def test_boundary_samples_follow_kernel_rules():
    """Single centred samples (1x1 output, 1 sample) placed exactly on the rule boundaries."""
    height, width = 4, 5
    features = torch.arange(2 * height * width, dtype=torch.float64).reshape(1, 2, height, width)
    rois = torch.tensor(
        [
            [0, -2.0, -2.0, 0.0, 0.0],  # centre (-1, -1): still valid, clamped to cell (0, 0)
            [0, -2.5, 0.0, 0.0, 2.0],  # centre x = -1.25: outside -> 0
            [0, width - 1.0, height - 1.0, width + 1.0, height + 1.0],  # centre (W, H): valid, last cell
            [0, width - 0.5, 0.0, width + 1.0, 2.0],  # centre x = W + 0.25: outside -> 0
            [0, 1.0, 1.0, 2.0, 2.0],  # centre (1.5, 1.5): mean of 4 cells
        ],
        dtype=torch.float64,
    )
    out = roi_align_torch(features, rois, 1, 1.0, 1, False)[:, :, 0, 0]
    f = features[0]
    torch.testing.assert_close(out[0], f[:, 0, 0])
    torch.testing.assert_close(out[1], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(out[2], f[:, height - 1, width - 1])
    torch.testing.assert_close(out[3], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(out[4], f[:, 1:3, 1:3].mean(dim=(1, 2)))


def test_adaptive_grid_on_exact_multiples_of_the_output_size():
    """roi sizes of exactly 7, 14, 21 cells: ceil() gives grids of 1, 2, 3 samples, not one more."""
    features = torch.randn(1, 2, 30, 30, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 0.0, 0.0, 7.0, 14.0], [0, 3.0, 2.0, 24.0, 9.0], [0, 1.5, 4.25, 15.5, 25.25]], dtype=torch.float64
    )
    for aligned in (False, True):
        expected = reference_forward(features.numpy(), rois.tolist(), (7, 7), 1.0, -1, aligned)
        actual = roi_align_torch(features, rois, 7, 1.0, -1, aligned)
        np.testing.assert_allclose(actual.numpy(), expected, rtol=0, atol=1e-12)
    # Worked by hand: the 7x14 box (not aligned) has bins of 1x2 cells, one sample per bin along
    # x (at pw + 0.5) and two along y (at 2ph + 0.5 and 2ph + 1.5).
    f = features[0]
    along_x = 0.5 * (f[:, :, 0:7] + f[:, :, 1:8])
    by_hand = 0.25 * along_x[:, 0:14:2] + 0.5 * along_x[:, 1:15:2] + 0.25 * along_x[:, 2:16:2]
    first = roi_align_torch(features, rois[:1], 7, 1.0, -1, False)[0]
    torch.testing.assert_close(first, by_hand, rtol=0, atol=1e-12)


def test_not_aligned_grows_small_boxes_to_one_cell_and_aligned_does_not():
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    point_box = torch.tensor([[0, 2.0, 3.0, 2.0, 3.0]], dtype=torch.float64)
    # Not aligned: the zero-size box becomes [2, 3] x [3, 4]; one sample at its centre.
    grown = roi_align_torch(features, point_box, 1, 1.0, 1, aligned=False)[0, :, 0, 0]
    torch.testing.assert_close(grown, features[0, :, 3:5, 2:4].mean(dim=(1, 2)))
    # Aligned: zero size gives an empty adaptive grid, hence 0.
    empty = roi_align_torch(features, point_box, 1, 1.0, -1, aligned=True)
    assert torch.count_nonzero(empty) == 0


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_input_gradient_matches_scalar_reference(aligned, sampling_ratio):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 8, 10, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(generator, 25, 8 / 0.5, 10 / 0.5, num_images=2)
    pooled = (4, 3)
    out = roi_align_torch(features, rois, pooled, 0.5, sampling_ratio, aligned)
    grad_output = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    out.backward(grad_output)
    expected = reference_input_gradient(
        tuple(features.shape), grad_output.numpy(), rois.tolist(), pooled, 0.5, sampling_ratio, aligned
    )
    np.testing.assert_allclose(features.grad.numpy(), expected, rtol=0, atol=1e-12)
    assert np.abs(expected).max() > 0.1


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 1, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 3.9, 4.2], [1, -1.2, 2.0, 6.5, 3.1], [1, 4.0, 4.0, 4.4, 4.3], [0, -3, -3, -2, -2]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(
        lambda x: roi_align_torch(x, rois, (3, 2), 1.0, -1, False), (features,), eps=1e-6, atol=1e-8
    )
    assert torch.autograd.gradcheck(lambda x: roi_align(x, rois, 2, 1.0, 2, True), (features,), eps=1e-6, atol=1e-8)


def test_boxes_get_no_gradient():
    features = torch.randn(1, 2, 5, 5, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.5, 3.5, 4.0]], requires_grad=True)
    roi_align_torch(features, rois, 2).sum().backward()
    assert rois.grad is None
    assert features.grad is not None


def test_list_of_boxes_equals_tensor_with_batch_index():
    generator = torch.Generator().manual_seed(11)
    features = torch.randn(3, 4, 12, 12, generator=generator)
    per_image = [
        torch.rand(n, 2, generator=generator).repeat(1, 2) * 40 + torch.tensor([0, 0, 8, 5]) for n in (2, 0, 3)
    ]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(per_image)])
    from_list = roi_align(features, per_image, 3, 0.25)
    from_tensor = roi_align(features, rois, 3, 0.25)
    assert from_list.shape == (5, 4, 3, 3)
    torch.testing.assert_close(from_list, from_tensor, rtol=0, atol=0)
    # Boxes of image 2 really read image 2: pooling them from image 0 differs.
    rois_wrong_image = rois.clone()
    rois_wrong_image[:, 0] = 0
    assert not torch.allclose(roi_align(features, rois_wrong_image, 3, 0.25)[2:], from_tensor[2:])


def test_zero_boxes():
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_align(features, torch.zeros(0, 5), (7, 4), 0.25)
    assert out.shape == (0, 3, 7, 4)
    out.sum().backward()
    assert torch.count_nonzero(features.grad) == 0
    assert roi_align(features, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)
    assert roi_align(torch.zeros(1, 3, 0, 0), torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    with pytest.raises(ValueError, match="empty feature map"):
        roi_align(torch.zeros(1, 3, 0, 4), torch.zeros(1, 5), 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_is_pooled_in_fp32(dtype):
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(1, 3, 9, 9, generator=generator).to(dtype)
    rois = torch.tensor([[0, 1.3, 2.1, 30.7, 25.2], [0, -4.0, 3.0, 12.0, 40.0]])
    out = roi_align(features, rois, 7, 0.25)
    assert out.dtype == dtype
    expected = roi_align_torch(features.float(), rois, 7, 0.25).to(dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_chunking_and_channels_last_give_identical_results(monkeypatch):
    generator = torch.Generator().manual_seed(13)
    features = torch.randn(2, 5, 16, 16, generator=generator)
    rois = random_rois(generator, 30, 64, 64, num_images=2).float()
    whole = roi_align_torch(features, rois, 7, 0.25)
    channels_last = roi_align_torch(features.contiguous(memory_format=torch.channels_last), rois, 7, 0.25)
    torch.testing.assert_close(channels_last, whole, rtol=0, atol=0)
    monkeypatch.setattr(roi_align_module, "_ENTRY_BUDGET", 1)  # one box per chunk
    torch.testing.assert_close(roi_align_torch(features, rois, 7, 0.25), whole, rtol=0, atol=0)


def test_invalid_arguments_raise_clear_errors():
    features = torch.randn(2, 3, 5, 5)
    with pytest.raises(ValueError, match="batch indexes"):
        roi_align(features, torch.tensor([[2.0, 0, 0, 1, 1]]), 2)
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        roi_align(features, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        roi_align(features, [torch.zeros(1, 4), torch.zeros(1, 5)], 2)
    with pytest.raises(ValueError, match="non-finite"):
        roi_align_torch(features, torch.tensor([[0.0, 0, float("nan"), 1, 1]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(features, torch.zeros(0, 5), (2, 0))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        roi_align(features[0], torch.zeros(0, 5), 2)


def test_backend_flag_reflects_torchvision_availability():
    try:
        import torchvision.ops  # noqa: F401

        torchvision_imports = True
    except Exception:  # noqa: BLE001 - a broken install counts as absent, like in the module
        torchvision_imports = False
    assert roi_align_backend() == ("torchvision" if torchvision_imports else "torch")


def test_matches_torchvision_when_available():
    tv_ops = pytest.importorskip("torchvision.ops", reason="torchvision is not importable here")
    generator = torch.Generator().manual_seed(17)
    features = torch.randn(2, 4, 12, 14, generator=generator, requires_grad=True)
    rois = random_rois(generator, 50, 48, 56, num_images=2).float()
    for aligned in (False, True):
        for sampling_ratio in (-1, 2):
            ours = roi_align_torch(features, rois, 7, 0.25, sampling_ratio, aligned)
            theirs = tv_ops.roi_align(features, rois, 7, 0.25, sampling_ratio, aligned)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
            grad_output = torch.randn(ours.shape, generator=generator)
            ours_grad = torch.autograd.grad(ours, features, grad_output)[0]
            theirs_grad = torch.autograd.grad(theirs, features, grad_output)[0]
            torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=2e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(19)
    features = torch.randn(2, 8, 20, 24, generator=generator)
    rois = random_rois(generator, 60, 80, 96, num_images=2).float()
    cpu = roi_align_torch(features, rois, 7, 0.25)
    gpu_input = features.cuda().requires_grad_()
    gpu = roi_align_torch(gpu_input, rois.cuda(), 7, 0.25)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5)
    gpu.sum().backward()
    cpu_input = features.clone().requires_grad_()
    roi_align_torch(cpu_input, rois, 7, 0.25).sum().backward()
    torch.testing.assert_close(gpu_input.grad.cpu(), cpu_input.grad, rtol=0, atol=1e-5)
    assert roi_align(features.cuda().half(), rois.cuda(), 7, 0.25).dtype == torch.float16


# --------------------------------------------------------------------------------------------
# Upstream fixtures: the raw ROI features are a function of stored maps and boxes only.
# --------------------------------------------------------------------------------------------
def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _mean_roi(feature_map, boxes, spatial_scale):
    return roi_align(feature_map, [boxes], 7, spatial_scale, -1, False).mean(dim=(2, 3))


@pytest.mark.parametrize("fixture", ["simplefp", "nofpn"])
def test_upstream_aux_roi_features(upstream_fixture_dir, fixture):
    maps = _load(upstream_fixture_dir / fixture / "expected" / "vision_intermediates.safetensors")
    region = _load(upstream_fixture_dir / fixture / "expected" / "detect_region_path.safetensors")
    stage0 = maps["davit_stage0"][None]
    upsampled = [
        F.interpolate(maps[f"davit_stage{i}"][None], size=stage0.shape[-2:], mode="bilinear", align_corners=False)
        for i in (1, 2, 3)
    ]
    aux = _mean_roi(torch.cat([stage0, *upsampled], dim=1), region["hfre_aux_boxes"], 0.25)
    assert aux.shape == region["roi_aux_raw"].shape == (6, 240)
    torch.testing.assert_close(aux, region["roi_aux_raw"], rtol=0, atol=1e-5)


def test_upstream_vt_roi_features_nofpn(upstream_fixture_dir):
    maps = _load(upstream_fixture_dir / "nofpn" / "expected" / "vision_intermediates.safetensors")
    region = _load(upstream_fixture_dir / "nofpn" / "expected" / "detect_region_path.safetensors")
    vit = torch.cat([maps[f"vit_fullatt_level{i}"] for i in range(4)], dim=0)[None]
    vt = _mean_roi(vit, region["hfre_vt_boxes"], 1 / 14)
    assert vt.shape == (6, 128)
    torch.testing.assert_close(vt, region["roi_vt_raw"], rtol=0, atol=1e-5)


def test_upstream_vt_roi_features_simplefp(upstream_fixture_dir):
    maps = _load(upstream_fixture_dir / "simplefp" / "expected" / "vision_intermediates.safetensors")
    region = _load(upstream_fixture_dir / "simplefp" / "expected" / "detect_region_path.safetensors")
    levels = [
        _mean_roi(maps[f"simplefp_level{i}"][None], region["hfre_vt_boxes"], scale)
        for i, scale in enumerate([1 / 3.5, 1 / 7, 1 / 14, 1 / 28])
    ]
    vt = torch.cat(levels, dim=1)
    assert vt.shape == (6, 64)
    torch.testing.assert_close(vt, region["roi_vt_raw"], rtol=0, atol=1e-5)
    # Discriminating: aligned=True (the wrong convention) misses by far more than the tolerance.
    wrong = roi_align(maps["simplefp_level2"][None], [region["hfre_vt_boxes"]], 7, 1 / 14, -1, True).mean(dim=(2, 3))
    assert (wrong - region["roi_vt_raw"][:, 32:48]).abs().max() > 1e-3


def test_torchvision_dispatch_gets_fp32_features_and_checked_rois(monkeypatch):
    calls = []

    def recording_torchvision(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        calls.append((features.dtype, tuple(rois.shape), output_size, spatial_scale, sampling_ratio, aligned))
        return roi_align_torch(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    monkeypatch.setattr(roi_align_module, "ROI_ALIGN_BACKEND", "torchvision")
    monkeypatch.setattr(roi_align_module, "_torchvision_roi_align", recording_torchvision)
    assert roi_align_backend() == "torchvision"
    features = torch.randn(2, 3, 6, 6).to(torch.bfloat16)
    out = roi_align(features, [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[4.0, 4, 20, 16]])], 3, 0.5, 2, True)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 3, 3)
    assert calls == [(torch.float32, (2, 5), (3, 3), 0.5, 2, True)]
    with pytest.raises(ValueError, match="batch indexes"):  # checked before torchvision sees it
        roi_align(features, torch.tensor([[5.0, 0, 0, 1, 1]]), 2)
