"""RoIAlign with exactly the semantics of ``torchvision.ops.roi_align``.

The HFRE region encoder pools every box with ``roi_align(aligned=False,
sampling_ratio=-1)`` in fp32 (see ``SPEC.md`` 2.3). torchvision is used when it
imports; otherwise a pure-PyTorch implementation reproduces torchvision's kernel:

* box corners are scaled by ``spatial_scale`` (cast to the compute dtype first, as
  the kernel does) and shifted by -0.5 only when ``aligned``;
* without ``aligned`` a box is at least 1x1 feature cell;
* each of the ``output_size`` bins is sampled on a ``grid_h x grid_w`` grid, where the
  grid is ``sampling_ratio`` or, when that is <= 0, ``ceil(roi_size / output_size)``
  per box (so it varies from box to box);
* a sample outside ``[-1, size]`` on either axis contributes 0; otherwise it is
  clamped into the map (``<= 0`` -> 0, at or past the last cell -> the last cell) and
  bilinearly interpolated;
* a bin is the mean over its grid (divided by ``max(grid_h * grid_w, 1)``).

Bilinear weights factor into a y part and an x part. Per axis, ``Wy`` [oh, h] and
``Wx`` [ow, w] accumulate the weights of all samples of each bin over the cells of a
*window*, the part of the map the box's samples touch; a box is then pooled as
``Wy @ window @ Wx.T``. Boxes are batched by window size (sizes rounded up to 1, 2, 3,
4, 6, 8, 12, ...), in chunks of at most ``_GATHER_BUDGET_ELEMENTS`` gathered values.
Autograd's gradient with respect to the input scatters through the same weights, as
torchvision's backward does. Boxes get no gradient (torchvision returns none either).

On CUDA the products run through cuBLAS, so with ``torch.backends.cuda.matmul.allow_tf32``
enabled they are TF32-accurate only; it is off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:  # torchvision may be absent or broken (a CUDA wheel without CUDA libraries raises on import)
    from torchvision.ops import roi_align as _torchvision_roi_align
except Exception:  # noqa: BLE001 - any import failure means: use the pure-PyTorch path
    _torchvision_roi_align = None

#: Which implementation ``roi_align`` dispatches to: ``"torchvision"`` or ``"torch"``.
ROI_ALIGN_BACKEND = "torchvision" if _torchvision_roi_align is not None else "torch"

# Upper bound on the feature values gathered per chunk of boxes (box windows x channels);
# 2**26 fp32 values = 256 MiB.
_GATHER_BUDGET_ELEMENTS = 1 << 26


def roi_align_backend() -> str:
    """The implementation ``roi_align`` uses: ``"torchvision"`` or ``"torch"``."""
    return ROI_ALIGN_BACKEND


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """Drop-in for ``torchvision.ops.roi_align``.

    Args:
        input: feature maps [N, C, H, W].
        boxes: Tensor[K, 5] rows ``(batch_index, x1, y1, x2, y2)``, or a list of N
            Tensor[L_i, 4] boxes, one per image, in input-image coordinates.
        output_size: ``oh`` or ``(oh, ow)``.
        spatial_scale: factor from box coordinates to feature-map cells.
        sampling_ratio: samples per bin and axis; <= 0 means adaptive per box.
        aligned: shift boxes by -0.5 cell (pixel-centre alignment).

    Returns:
        [K, C, oh, ow] in ``input``'s dtype. bf16/fp16 inputs are pooled in fp32
        (fp64 inputs in fp64) and cast back.
    """
    compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    features = input.to(compute_dtype)
    rois, output_size = _checked_arguments(features, boxes, output_size)
    if ROI_ALIGN_BACKEND == "torchvision":
        pooled = _torchvision_roi_align(features, rois, output_size, float(spatial_scale), int(sampling_ratio), aligned)
    else:
        pooled = _roi_align_torch(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return pooled.to(input.dtype)


def roi_align_torch(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """The pure-PyTorch implementation behind ``roi_align`` (computes in ``input``'s dtype).

    Public so that it can be checked against torchvision where both exist; callers
    should use ``roi_align``.
    """
    rois, output_size = _checked_arguments(input, boxes, output_size)
    return _roi_align_torch(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _checked_arguments(
    input: torch.Tensor, boxes: torch.Tensor | Sequence[torch.Tensor], output_size: int | Sequence[int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[K, 5] rois on ``input``'s device and dtype, and (oh, ow); ``ValueError`` on bad input.

    torchvision checks none of this (an out-of-range batch index reads foreign memory).
    """
    if input.dim() != 4:
        raise ValueError(f"roi_align expects input of shape [N, C, H, W], got {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"roi_align expects a floating-point input, got {input.dtype}")
    pooled_size = _pair(output_size)
    rois = _as_rois(boxes).to(device=input.device, dtype=input.dtype).detach()
    if rois.shape[0] == 0:
        return rois, pooled_size
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"roi_align got an empty feature map of size {input.shape[2]}x{input.shape[3]}")
    finite = torch.isfinite(rois).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"roi_align got non-finite box coordinates in rows {(~finite).nonzero().flatten().tolist()}")
    batch_index = rois[:, 0].long()  # truncation, like the kernel's int cast
    if bool(((batch_index < 0) | (batch_index >= input.shape[0])).any()):
        raise ValueError(
            f"roi_align box batch indexes must lie in [0, {input.shape[0]}), got {sorted(set(batch_index.tolist()))}"
        )
    return rois, pooled_size


def _roi_align_torch(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    pooled_h, pooled_w = output_size
    num_images, channels, height, width = input.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        # An empty result that is still part of the graph, so backward() works and gives zeros.
        return input.reshape(-1)[:0].reshape(0, 1, 1, 1).expand(0, channels, pooled_h, pooled_w)
    batch_index = rois[:, 0].long()

    scale = torch.tensor(spatial_scale, dtype=input.dtype, device=input.device)
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * scale - offset
    start_y = rois[:, 2] * scale - offset
    roi_w = (rois[:, 3] * scale - offset) - start_x
    roi_h = (rois[:, 4] * scale - offset) - start_y
    if not aligned:
        roi_w = roi_w.clamp_min(1.0)
        roi_h = roi_h.clamp_min(1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(batch_index, sampling_ratio)
        grid_w = torch.full_like(batch_index, sampling_ratio)
    else:
        # Negative sizes (possible only when aligned) give an empty grid and a zero output.
        grid_h = torch.ceil(roi_h / pooled_h).long().clamp_min(0)
        grid_w = torch.ceil(roi_w / pooled_w).long().clamp_min(0)
    count = (grid_h * grid_w).clamp_min(1).to(input.dtype)

    y_axis = _AxisInterpolation(start_y, roi_h / pooled_h, grid_h, pooled_h, height)
    x_axis = _AxisInterpolation(start_x, roi_w / pooled_w, grid_w, pooled_w, width)

    # Channels stay the leading axis: [C, N*H*W] is a view for N == 1, and gathering whole
    # windows per channel plane reads memory in order (a channels-last copy would not).
    flat = input.transpose(0, 1).reshape(channels, num_images * height * width)
    bucket_key = y_axis.window * (width + 1) + x_axis.window
    pooled_parts, part_rows = [], []
    for key in torch.unique(bucket_key).tolist():
        window_h, window_w = divmod(key, width + 1)
        rows_in_bucket = (bucket_key == key).nonzero().flatten()
        chunk = max(1, _GATHER_BUDGET_ELEMENTS // (window_h * window_w * channels))
        for rows in rows_in_bucket.split(chunk):
            cell_y = batch_index[rows, None] * height + y_axis.origin[rows, None] + y_axis.offsets[:window_h]
            cell_x = x_axis.origin[rows, None] + x_axis.offsets[:window_w]
            cells = cell_y[:, :, None] * width + cell_x[:, None, :]
            windows = flat.index_select(1, cells.flatten()).view(channels, len(rows), window_h, window_w)
            # Bilinear weights factor per axis, so a box pools as Wy @ window @ Wx^T. Batched
            # over (channel, box) with the weights broadcast over channels, so that the large
            # gathered tensor is never copied: [C, k, h, w] @ [k, w, ow] -> [C, k, h, ow], then
            # [k, oh, h] @ [C, k, h, ow] -> [C, k, oh, ow].
            pooled = torch.matmul(windows, x_axis.weights[rows, :, :window_w].transpose(1, 2))
            pooled = torch.matmul(y_axis.weights[rows, :, :window_h], pooled)
            pooled_parts.append(pooled.transpose(0, 1) / count[rows][:, None, None, None])
            part_rows.append(rows)
    order = torch.cat(part_rows)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_rois, device=order.device)
    return torch.cat(pooled_parts).index_select(0, inverse)


class _AxisInterpolation:
    """Sample positions and bilinear weights of all boxes along one axis.

    Boxes sample ``grid`` points per bin; grids are padded to the largest one and the
    padding gets zero weight, so all boxes share one tensor layout [K, bins, samples].
    """

    def __init__(self, start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int, size: int):
        samples = max(int(grid.max()), 1)
        dtype = start.dtype
        bin_index = torch.arange(bins, device=start.device, dtype=dtype)[None, :, None]
        sample_index = torch.arange(samples, device=start.device)
        # Same operation order as the kernel: start + p*bin + ((i + 0.5) * bin) / grid.
        position = (start[:, None, None] + bin_index * bin_size[:, None, None]) + (
            (sample_index.to(dtype)[None, None, :] + 0.5) * bin_size[:, None, None]
        ) / grid.clamp_min(1).to(dtype)[:, None, None]
        valid = (position >= -1.0) & (position <= size) & (sample_index[None, None, :] < grid[:, None, None])
        position = position.clamp_min(0.0)
        low = position.long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, torch.full_like(low, size - 1), low)
        high = torch.where(at_edge, low, low + 1)
        position = torch.where(at_edge, low.to(dtype), position)
        frac = position - low.to(dtype)
        zero = torch.zeros((), dtype=dtype, device=start.device)
        weight_low = torch.where(valid, 1.0 - frac, zero)
        weight_high = torch.where(valid, frac, zero)

        # The cells a box touches: [first, last]; boxes with no valid sample touch cell 0 only.
        any_valid = valid.flatten(1).any(dim=1)
        first = torch.where(valid, low, size).flatten(1).amin(dim=1)
        last = torch.where(valid, high, -1).flatten(1).amax(dim=1)
        first = torch.where(any_valid, first, 0)
        span = torch.where(any_valid, last - first + 1, 1)
        # Round windows up to the next of 1, 2, 3, 4, 6, 8, 12, 16, ... so that boxes of similar
        # size share one bucket while gathering at most 50% more cells per axis than needed.
        power = torch.exp2(torch.floor(torch.log2(span.double()))).long()
        window = torch.where(span <= power, power, torch.where(2 * span <= 3 * power, 3 * power // 2, 2 * power))
        self.window = window.clamp_max(size)

        # Window origins, shifted left where a window would run past the end of the map.
        self.origin = first.clamp_max(size - self.window)
        self.offsets = torch.arange(size, device=start.device)

        # Weights [K, bins, widest window] of every box over its own window; columns past a
        # box's window stay 0, so a bucket slices them off. Indexes of invalid samples
        # (weight 0) are clamped into the window.
        last_column = (self.window - 1)[:, None, None]
        local_low = torch.minimum((low - self.origin[:, None, None]).clamp_min(0), last_column)
        local_high = torch.minimum((high - self.origin[:, None, None]).clamp_min(0), last_column)
        weights = weight_low.new_zeros(len(start), bins, int(self.window.max()))
        weights.scatter_add_(2, local_low, weight_low)
        self.weights = weights.scatter_add_(2, local_high, weight_high)


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def _as_rois(boxes: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """[K, 5] rois (batch index first) from either accepted box format."""
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"boxes as a Tensor must have shape [K, 5], got {tuple(boxes.shape)}")
        return boxes
    boxes = list(boxes)
    for image_index, image_boxes in enumerate(boxes):
        if not isinstance(image_boxes, torch.Tensor) or image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            shape = tuple(image_boxes.shape) if isinstance(image_boxes, torch.Tensor) else type(image_boxes)
            raise ValueError(f"boxes[{image_index}] must be a Tensor of shape [L, 4], got {shape}")
    if not boxes:
        return torch.zeros(0, 5)
    dtype = boxes[0].dtype if boxes[0].is_floating_point() else torch.float32
    rois = [torch.cat([torch.full_like(b[:, :1], i, dtype=dtype), b.to(dtype)], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)
