"""Hybrid Fine-grained Region Encoder (HFRE): boxes + vision feature maps -> one LLM token per box.

Two branches, fused by concatenation (SPEC §2.1-2.3):
- auxiliary: DaViT stage maps, upsampled to the stride-4 map and concatenated, RoIAlign 7x7, mean;
- primary: the base VLM's own ViT at its full-attention blocks (before the merger), either through
  SimpleFP (4 levels at strides 3.5/7/14/28, RoIAlign + mean per level) or concatenated on channels.
Then optional LayerNorm per branch, the box sine embedding added, and the connector MLP.

The encoder works on a batch: the boxes of all images at once, each with the index of its image.
The DaViT maps of all images are pooled in one pass (they share the auxiliary input size), and
SimpleFP plus pooling run once per group of equally sized primary images. Pooling uses
`roi_align_mean`, which gives each box the mean of its RoIAlign bins without building the bins or
the upsampled, concatenated DaViT map.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlmfo1.modeling.configuration_fo1 import FO1Config
from vlmfo1.modeling.roi_align import roi_align_mean

SIMPLE_FP_SCALES = (4.0, 2.0, 1.0, 0.5)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (ViTDet style).

    Runs the fused `F.layer_norm` on the channels-last view of the map: one kernel instead of a
    chain of elementwise ops (whose backward dominated SimpleFP's time), and its output is
    channels_last, which the following convolutions and region pooling keep.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return normalised.permute(0, 3, 1, 2)


class ConvNorm(nn.Conv2d):
    """Bias-free conv followed by a channel LayerNorm, stored as `weight` + `norm.*`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = ChannelLayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == (1, 1):
            # A 1x1 convolution is a matmul over channels; as one on the channels-last view it is a
            # single GEMM (torch's CPU conv picks a slow im2col path for this shape).
            mixed = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1)).permute(0, 3, 1, 2)
            return self.norm(mixed)
        return self.norm(super().forward(x))


class SimpleFP(nn.Module):
    """ViTDet's simple feature pyramid: one stride-14 map -> maps at scales x4, x2, x1, x0.5.

    Submodules are named by log2 of their stride (simfp_1 .. simfp_4), as in the released weights.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        c = in_channels

        def head(width: int) -> list[nn.Module]:
            return [ConvNorm(width, out_channels, 1), ConvNorm(out_channels, out_channels, 3)]

        self.simfp_1 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, stride=2),
            ChannelLayerNorm(c // 2),
            nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
            *head(c // 4),
        )
        self.simfp_2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, stride=2), *head(c // 2))
        self.simfp_3 = nn.Sequential(*head(c))
        self.simfp_4 = nn.Sequential(nn.MaxPool2d(2, stride=2), *head(c))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.simfp_1(x), self.simfp_2(x), self.simfp_3(x), self.simfp_4(x)]


def box_sine_embedding(boxes_cxcywh: torch.Tensor, dim_per_coord: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine-cosine embedding of normalised (cx, cy, w, h) boxes, parts in the order (cy, cx, w, h).

    Index i of each part is sin (even i) or cos (odd i) of coord * 2pi / temperature^(2*floor(i/2)/D).
    """
    dim_t = torch.arange(dim_per_coord, dtype=torch.float32, device=boxes_cxcywh.device)
    dim_t = temperature ** (2 * (dim_t // 2) / dim_per_coord)

    def embed(coord: torch.Tensor) -> torch.Tensor:
        pos = (coord * (2 * math.pi))[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    cx, cy, w, h = boxes_cxcywh.float().unbind(-1)
    return torch.cat([embed(cy), embed(cx), embed(w), embed(h)], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    return torch.stack([x1 + w / 2, y1 + h / 2, w, h], dim=-1)


def _layer_norm_fp32(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # Region features are pooled in fp32; keep their normalisation in fp32 even in a bf16 model.
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def _pool_regions(
    feature_maps: Sequence[torch.Tensor], rois: torch.Tensor, spatial_scale: float, output_size: int
) -> torch.Tensor:
    """RoIAlign (torchvision semantics, aligned=False, adaptive sampling) in fp32, mean over the grid.

    `feature_maps` [N, C_i, H_i, W_i] stand for their channel concatenation, each bilinearly resized
    to the first one's size; `rois` [K, 5] are (image index, x1, y1, x2, y2) in input pixels.
    """
    return roi_align_mean([m.float() for m in feature_maps], rois, output_size, spatial_scale, -1, False)


def _as_batch(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One image's maps [C, H, W] as a batch of one; batched maps [N, C, H, W] unchanged."""
    return [m[None] if m.dim() == 3 else m for m in maps]


def _rois(boxes_px: torch.Tensor, image_index: torch.Tensor | None) -> torch.Tensor:
    """[K, 5] rois: the image index of each box (all 0 when None) before its pixel corners."""
    index = (
        boxes_px.new_zeros(boxes_px.shape[0], 1)
        if image_index is None
        else image_index.to(device=boxes_px.device, dtype=boxes_px.dtype)[:, None]
    )
    return torch.cat([index, boxes_px], dim=1)


def build_connector(connector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    depth = {"linear": 1, "mlp2x_gelu": 2, "mlp3x_gelu": 3}[connector_type]
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class RegionEncoder(nn.Module):
    """Maps each box to one embedding in the LLM's input space."""

    def __init__(self, config: FO1Config):
        super().__init__()
        self.config = config
        vision = config.vlm_config.vision_config
        self.patch_size = vision.patch_size
        self.aux_stride = config.aux_encoder_config.patch_stride[0]
        if config.use_primary_features and config.use_simple_fp:
            self.simple_fp = SimpleFP(vision.hidden_size, config.simple_fp_dim)
        if config.use_region_layer_norm:
            if config.use_aux_features:
                self.aux_norm = nn.LayerNorm(config.aux_region_dim)
            if config.use_primary_features:
                self.primary_norm = nn.LayerNorm(config.primary_region_dim)
        self.connector = build_connector(
            config.connector_type, config.region_hidden_size, config.vlm_config.text_config.hidden_size
        )

    def aux_features(
        self,
        stage_maps: Sequence[torch.Tensor],
        boxes: torch.Tensor,
        aux_size: int,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[n, aux_region_dim] features of normalised xyxy boxes [n, 4] from the DaViT stage outputs.

        stage_maps: per stage, the batch [N, C_s, H_s, W_s] (or one image's [C_s, H_s, W_s]);
        image_index [n]: the image of each box (default: image 0). The stage maps are upsampled to
        the first stage's size and concatenated (SPEC 2.2); `roi_align_mean` pools that fused map
        without building it.
        """
        rois = _rois((boxes * aux_size).float(), image_index)
        return _pool_regions(_as_batch(stage_maps), rois, 1.0 / self.aux_stride, self.config.roi_output_size)

    def primary_features(
        self,
        levels: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
        boxes: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[n, primary_region_dim] features of normalised xyxy boxes [n, 4] from the primary ViT.

        levels: per image, the list of ViT maps [C, H, W] at the full-attention blocks (raster
        order); or one image's list. image_index [n]: the image of each box (default: image 0).
        Images of equal size share one SimpleFP pass and one pooling call per level.
        """
        per_image = [levels] if isinstance(levels[0], torch.Tensor) else list(levels)
        if image_index is None:
            image_index = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
        image_index = image_index.to(boxes.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for image in sorted(set(image_index.tolist())) or [0]:  # no boxes: an empty, connected result
            groups.setdefault(tuple(per_image[image][-1].shape[-2:]), []).append(image)
        if len(groups) == 1:
            (images,) = groups.values()
            return self._primary_group(per_image, images, boxes, image_index)
        # Images of different sizes: one pass per size, then the boxes back in their order.
        parts, positions = [], []
        for images in groups.values():
            selected = torch.isin(image_index, torch.tensor(images, device=boxes.device)).nonzero().flatten()
            parts.append(self._primary_group(per_image, images, boxes[selected], image_index[selected]))
            positions.append(selected)
        return torch.cat(parts).index_select(0, torch.argsort(torch.cat(positions)))

    def _primary_group(
        self, per_image: list, images: list[int], boxes: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """Primary features of the boxes on `images`, all of one size: their maps pooled as one batch."""
        used_levels = [-1] if self.config.use_simple_fp else range(len(per_image[images[0]]))
        maps = [torch.stack([per_image[i][level] for i in images]) for level in used_levels]
        position_in_group = torch.empty(len(per_image), dtype=torch.long, device=boxes.device)
        position_in_group[images] = torch.arange(len(images), device=boxes.device)
        height, width = maps[-1].shape[-2:]
        scale = boxes.new_tensor([width, height, width, height], dtype=torch.float32) * self.patch_size
        rois = _rois(boxes.float() * scale, position_in_group[image_index])
        size = self.config.roi_output_size
        if self.config.use_simple_fp:
            pyramid = self.simple_fp(maps[-1])
            return torch.cat(
                [
                    _pool_regions([level], rois, 1.0 / (self.patch_size / factor), size)
                    for level, factor in zip(pyramid, SIMPLE_FP_SCALES)
                ],
                dim=-1,
            )
        return _pool_regions(maps, rois, 1.0 / self.patch_size, size)

    def fuse(self, aux: torch.Tensor | None, primary: torch.Tensor | None, boxes: torch.Tensor) -> torch.Tensor:
        """[LN(aux) | LN(primary)] + box embedding, in fp32: the HFRE output before the connector."""
        parts = []
        for feature, norm_name in ((aux, "aux_norm"), (primary, "primary_norm")):
            if feature is None:
                continue
            norm = getattr(self, norm_name, None)
            parts.append(_layer_norm_fp32(norm, feature) if norm is not None else feature.float())
        fused = torch.cat(parts, dim=-1)
        if self.config.use_position_embedding:
            fused = fused + box_sine_embedding(xyxy_to_cxcywh(boxes.float()), fused.shape[-1] // 4)
        return fused

    def forward(
        self,
        boxes: torch.Tensor,
        primary_levels: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
        aux_stage_maps: Sequence[torch.Tensor] | None = None,
        aux_size: int | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Region tokens [n, hidden] for normalised xyxy boxes [n, 4].

        One image: its level list and its stage maps [C, H, W]. A batch: `image_index` [n] gives
        each box's image, `primary_levels` lists each image's levels and `aux_stage_maps` holds
        [N, C_s, H_s, W_s] per stage (see `aux_features` / `primary_features`).
        """
        aux = self.aux_features(aux_stage_maps, boxes, aux_size, image_index) if self.config.use_aux_features else None
        primary = (
            self.primary_features(primary_levels, boxes, image_index) if self.config.use_primary_features else None
        )
        fused = self.fuse(aux, primary, boxes)
        first = self.connector[0].weight
        return self.connector(fused.to(first.dtype))
