"""RoIAlign with exactly the semantics of ``torchvision.ops.roi_align``.

The HFRE region encoder pools every box with these semantics (``aligned=False,
sampling_ratio=-1``, fp32, see ``SPEC.md`` 2.3), through ``roi_align_mean`` below.
``roi_align`` uses torchvision when it imports; otherwise a pure-PyTorch implementation
reproduces torchvision's kernel:

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

Every output bin is a weighted sum of map cells, so the whole operation is one sparse
[K*oh*ow, N*H*W] matrix times the map. Bilinear weights factor into a y and an x part:
per axis, the weights of a bin's samples are summed per cell over the band of cells the
samples touch; their outer product gives the bin's (cell, weight) entries, and
``embedding_bag(mode="sum", per_sample_weights=...)`` evaluates the product with the
map's cells as rows of a [N*H*W, C] table. Nothing of size boxes x channels x cells is
materialised, and autograd's gradient with respect to the input is the same weights
scattered back, as in torchvision's backward. Boxes get no gradient (torchvision returns
none either). The table is a view of a channels_last input and a copy otherwise.

``roi_align_mean`` is what the HFRE needs: each box's mean over its bins, [K, C]. That mean is
again one separable weighted sum of cells per box, so it is computed once per box (not per bin),
and for maps that stand for a bilinearly resized concatenation (the fused DaViT map) on the maps
themselves, with the resizing folded into the per-axis weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:  # torchvision may be absent or broken (a CUDA wheel without CUDA libraries raises on import)
    from torchvision.ops import roi_align as _torchvision_roi_align
except Exception:  # noqa: BLE001 - any import failure means: use the pure-PyTorch path
    _torchvision_roi_align = None

#: Which implementation ``roi_align`` dispatches to: ``"torchvision"`` or ``"torch"``.
ROI_ALIGN_BACKEND = "torchvision" if _torchvision_roi_align is not None else "torch"

# Upper bound on the (bin, cell) entries built per chunk of boxes: K x oh x ow x band_h x band_w
# before zero entries are dropped. With adaptive sampling a bin's band is about its size in
# cells, so 100 boxes of any size on a 192x192 map fit in one chunk.
_ENTRY_BUDGET = 1 << 24


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


def roi_align_mean(
    input: torch.Tensor | Sequence[torch.Tensor],
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """``roi_align(...).mean(dim=(2, 3))``: each box's RoIAlign bins averaged, [K, C].

    ``input`` is one map [N, C, H, W] or a sequence of maps [N, C_i, H_i, W_i] that stands for
    ``torch.cat([F.interpolate(m, size=(H_0, W_0), mode="bilinear", align_corners=False) for m in
    input], dim=1)`` (the first map's size; the HFRE's fused DaViT map), without building it.

    Neither the bins nor the resized maps are materialised. The mean over the bins of a box is a
    weighted sum of map cells whose weight is a product of a y and an x weight (the sampling grid
    is a product of per-axis samples, and so are the bilinear weights), and resizing is linear
    and separable too, so each resized map gets its own per-axis weights (``per-axis weights @
    resize matrix``). One ``embedding_bag`` per map then sums, for every box, the cells inside its
    band with those product weights: work proportional to the box area times the channels, once
    rather than once per bin. The result equals pooling the materialised map up to rounding
    (about 1e-7 relative in fp32, 1e-15 in fp64), and its gradient is the same weights scattered
    back. Computed in fp32 (fp64 for fp64 input) like ``roi_align``; returned in ``input``'s dtype.
    """
    maps = [input] if isinstance(input, torch.Tensor) else list(input)
    if not maps:
        raise ValueError("roi_align_mean needs at least one feature map")
    reference = maps[0]
    compute_dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
    rois, output_size = _checked_arguments(reference, boxes, output_size, dtype=compute_dtype)
    for index, feature_map in enumerate(maps[1:], start=1):
        if feature_map.dim() != 4 or feature_map.shape[0] != reference.shape[0]:
            raise ValueError(
                f"roi_align_mean maps must be [N, C, H, W] with the same N; map 0 is {tuple(reference.shape)}, "
                f"map {index} is {tuple(feature_map.shape)}"
            )
        if feature_map.shape[2] == 0 or feature_map.shape[3] == 0:
            raise ValueError(f"roi_align_mean got an empty feature map {index} of size {tuple(feature_map.shape[2:])}")
    if rois.shape[0] == 0:
        # Empty, yet part of the graph, so backward() works and gives zeros.
        return torch.cat([m.reshape(-1)[:0].reshape(0, 1).expand(0, m.shape[1]) for m in maps], dim=1)

    height, width = reference.shape[2:]
    # Pooling is specified in fp32: an enclosing autocast must not run the weight products in bf16.
    with torch.autocast(reference.device.type, enabled=False):
        y_axis, x_axis, count = _sampling_grid(rois, output_size, spatial_scale, sampling_ratio, aligned, height, width)
        y_weight, x_weight = y_axis.per_box(), x_axis.per_box()  # [K, H], [K, W]
        batch_index = rois[:, 0].long()
        pooled = []
        for feature_map in maps:
            map_h, map_w = feature_map.shape[2:]
            pooled.append(
                _weighted_box_sums(
                    feature_map.to(compute_dtype),
                    batch_index,
                    y_weight if map_h == height else y_weight @ _resize_matrix(map_h, height, y_weight),
                    x_weight if map_w == width else x_weight @ _resize_matrix(map_w, width, x_weight),
                )
            )
        bins = output_size[0] * output_size[1]
        mean = torch.cat(pooled, dim=1) / (count * bins)[:, None]
    return mean.to(reference.dtype)


def _resize_matrix(source: int, target: int, like: torch.Tensor) -> torch.Tensor:
    """[target, source]: 1-D linear resizing as ``F.interpolate(align_corners=False)`` does it.

    Bilinear resizing applies this matrix along each axis; it is taken from ``F.interpolate``
    itself (resizing the identity), so it has exactly torch's source indexes and weights.
    """
    identity = torch.eye(source, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(identity, size=target, mode="linear", align_corners=False)[0].T


def _weighted_box_sums(
    input: torch.Tensor, batch_index: torch.Tensor, y_weight: torch.Tensor, x_weight: torch.Tensor
) -> torch.Tensor:
    """[K, C]: sum over cells (y, x) of box k's image of ``y_weight[k, y] * x_weight[k, x] * cell``.

    Only the band of cells with a non-zero weight on both axes is visited: the entries of all
    boxes are laid out ragged (no padding to the largest box) as one ``embedding_bag`` over the
    map's cells as rows of a [N*H*W, C] table (a view of a channels_last map, else one copy).
    """
    height, width = input.shape[2:]
    num_rois = batch_index.shape[0]
    first_y, band_y = _support(y_weight)
    first_x, band_x = _support(x_weight)
    entries = band_y * band_x
    starts = torch.cumsum(entries, 0) - entries
    box = torch.repeat_interleave(torch.arange(num_rois, device=input.device), entries)
    local = torch.arange(box.shape[0], device=input.device) - starts[box]
    row_in_band = torch.div(local, band_x[box], rounding_mode="floor")
    y = first_y[box] + row_in_band
    x = first_x[box] + (local - row_in_band * band_x[box])
    cells = (batch_index[box] * height + y) * width + x
    weights = y_weight[box, y] * x_weight[box, x]
    table = _cells_as_rows(input)
    return F.embedding_bag(cells, table, starts, mode="sum", per_sample_weights=weights)


def _cells_as_rows(input: torch.Tensor) -> torch.Tensor:
    """The map's cells as rows of a [N*H*W, C] table: a view of a channels_last map, else a copy."""
    num_images, channels, height, width = input.shape
    rows = input.permute(0, 2, 3, 1)
    if rows.is_contiguous() or not input.is_contiguous():
        return rows.reshape(num_images * height * width, channels)
    return _TransposedCells.apply(input)


def _transpose_images(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """target[n] = source[n].T for [N, A, B] -> [N, B, A], image by image as 2-D matrices.

    ATen copies a transposed 2-D matrix with a cache-blocked kernel, several times faster than its
    generic copy of a 4-D permutation on large maps (benchmarks/roi_align_speed.py).
    """
    for image in range(source.shape[0]):
        target[image].copy_(source[image].t())
    return target


class _TransposedCells(torch.autograd.Function):
    """NCHW map -> [N*H*W, C] cell rows, and the gradient back to NCHW, both by 2-D transposes."""

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        num_images, channels, height, width = input.shape
        flat = input.view(num_images, channels, height * width)
        rows = _transpose_images(flat, input.new_empty(num_images, height * width, channels))
        return rows.view(num_images * height * width, channels)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: torch.Tensor) -> torch.Tensor:
        num_images, channels, height, width = ctx.shape
        grad_rows = grad_rows.contiguous().view(num_images, height * width, channels)
        grad = _transpose_images(grad_rows, grad_rows.new_empty(num_images, channels, height * width))
        return grad.view(ctx.shape)


def _support(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First non-zero index and length of the non-zero band of each row of [K, L] (0, 0 if none)."""
    nonzero = weight != 0
    any_nonzero = nonzero.any(dim=1)
    length = weight.shape[1]
    positions = torch.arange(length, device=weight.device)
    first = torch.where(nonzero, positions, length).amin(dim=1)
    last = torch.where(nonzero, positions, -1).amax(dim=1)
    band = torch.where(any_nonzero, last - first + 1, 0)
    return torch.where(any_nonzero, first, 0), band


def _checked_arguments(
    input: torch.Tensor,
    boxes: torch.Tensor | Sequence[torch.Tensor],
    output_size: int | Sequence[int],
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """[K, 5] rois on ``input``'s device in ``dtype`` (default: ``input``'s), and (oh, ow);
    ``ValueError`` on bad input.

    torchvision checks none of this (an out-of-range batch index reads foreign memory).
    """
    if input.dim() != 4:
        raise ValueError(f"roi_align expects input of shape [N, C, H, W], got {tuple(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"roi_align expects a floating-point input, got {input.dtype}")
    pooled_size = _pair(output_size)
    rois = _as_rois(boxes).to(device=input.device, dtype=dtype or input.dtype).detach()
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
    channels, height, width = input.shape[1:]
    num_rois = rois.shape[0]
    if num_rois == 0:
        # An empty result that is still part of the graph, so backward() works and gives zeros.
        return input.reshape(-1)[:0].reshape(0, 1, 1, 1).expand(0, channels, pooled_h, pooled_w)

    y_axis, x_axis, count = _sampling_grid(rois, output_size, spatial_scale, sampling_ratio, aligned, height, width)

    # Map cells as rows of a [N*H*W, C] table: a view of a channels_last input, else one copy.
    table = _cells_as_rows(input)
    batch_index = rois[:, 0].long()
    # Boxes in order of band area (similar boxes pad alike), in chunks that bound the entries.
    band_area = y_axis.band_per_box * x_axis.band_per_box
    order = torch.argsort(band_area)
    chunk = max(1, _ENTRY_BUDGET // (pooled_h * pooled_w * int(band_area.max())))
    pooled_parts = []
    for rows in order.split(chunk):
        band_y, band_x = int(y_axis.band_per_box[rows].max()), int(x_axis.band_per_box[rows].max())
        weight_y, cell_y = y_axis.banded(rows, band_y)  # [k, oh, band_y]
        weight_x, cell_x = x_axis.banded(rows, band_x)  # [k, ow, band_x]
        weight = weight_y[:, :, None, :, None] * weight_x[:, None, :, None, :]  # [k, oh, ow, band_y, band_x]
        row_y = batch_index[rows, None, None] * height + cell_y  # row of the image's map
        cell = row_y[:, :, None, :, None] * width + cell_x[:, None, :, None, :]
        used = weight != 0
        entries_per_bin = used.flatten(3).sum(dim=3).flatten()
        bin_starts = torch.cumsum(entries_per_bin, 0) - entries_per_bin
        pooled = F.embedding_bag(cell[used], table, bin_starts, mode="sum", per_sample_weights=weight[used])
        pooled_parts.append(pooled.view(len(rows), pooled_h, pooled_w, channels))
    pooled = torch.cat(pooled_parts).index_select(0, torch.argsort(order))
    return (pooled.permute(0, 3, 1, 2) / count[:, None, None, None]).contiguous()


def _sampling_grid(
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    height: int,
    width: int,
) -> tuple[_AxisWeights, _AxisWeights, torch.Tensor]:
    """The kernel's sample points of every box, per axis, and each box's samples per bin (``count``)."""
    pooled_h, pooled_w = output_size
    scale = torch.tensor(spatial_scale, dtype=rois.dtype, device=rois.device)
    offset = 0.5 if aligned else 0.0
    start_x = rois[:, 1] * scale - offset
    start_y = rois[:, 2] * scale - offset
    roi_w = (rois[:, 3] * scale - offset) - start_x
    roi_h = (rois[:, 4] * scale - offset) - start_y
    if not aligned:
        roi_w = roi_w.clamp_min(1.0)
        roi_h = roi_h.clamp_min(1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(rois[:, 0], sampling_ratio, dtype=torch.long)
        grid_w = grid_h
    else:
        # Negative sizes (possible only when aligned) give an empty grid and a zero output.
        grid_h = torch.ceil(roi_h / pooled_h).long().clamp_min(0)
        grid_w = torch.ceil(roi_w / pooled_w).long().clamp_min(0)
    count = (grid_h * grid_w).clamp_min(1).to(rois.dtype)
    y_axis = _AxisWeights(start_y, roi_h / pooled_h, grid_h, pooled_h, height)
    x_axis = _AxisWeights(start_x, roi_w / pooled_w, grid_w, pooled_w, width)
    return y_axis, x_axis, count


class _AxisWeights:
    """Bilinear weights of all boxes along one axis, summed per bin over a band of cells.

    Samples are laid out [K, bins, samples] with every box's grid padded to the largest
    (padding gets weight 0). A bin's samples touch the consecutive cells
    ``first[k, p] .. first[k, p] + band - 1``; ``banded`` sums their weights per cell.
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
        self.weight_low = torch.where(valid, 1.0 - frac, zero)
        self.weight_high = torch.where(valid, frac, zero)

        any_valid = valid.any(dim=2)
        first = torch.where(valid, low, size).amin(dim=2)
        last = torch.where(valid, high, -1).amax(dim=2)
        self.first = torch.where(any_valid, first, 0)  # [K, bins]
        self.band_per_box = torch.where(any_valid, last - first + 1, 1).amax(dim=1)  # [K]
        self.low, self.high, self.size = low, high, size

    def banded(self, rows: torch.Tensor, band: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [k, bins, band] of the given boxes and the map cell of each band slot."""
        first = self.first[rows, :, None]
        # Indexes of zero-weight samples may fall outside the band; clamping them is harmless.
        local_low = (self.low[rows] - first).clamp(0, band - 1)
        local_high = (self.high[rows] - first).clamp(0, band - 1)
        weight = self.weight_low.new_zeros(len(rows), self.first.shape[1], band)
        weight.scatter_add_(2, local_low, self.weight_low[rows])
        weight.scatter_add_(2, local_high, self.weight_high[rows])
        cell = (first + torch.arange(band, device=first.device)).clamp_max(self.size - 1)
        return weight, cell

    def per_box(self) -> torch.Tensor:
        """[K, size]: the weight of each map cell in the sum over all bins and samples of a box."""
        num_rois = self.low.shape[0]
        weight = self.weight_low.new_zeros(num_rois, self.size)
        weight.scatter_add_(1, self.low.flatten(1), self.weight_low.flatten(1))
        weight.scatter_add_(1, self.high.flatten(1), self.weight_high.flatten(1))
        return weight


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
