"""FO1ForConditionalGeneration: an unmodified transformers Qwen2.5-VL plus the region encoder.

The ViT runs once per image: its merger output becomes the image tokens and its full-attention
block outputs feed the region encoder. Region tokens replace the embeddings of the region
placeholder token (`<regionfeat>`), which sits right after each `<regionK>` index token and takes
ordinary text positions in M-RoPE; the image keeps its 3-D positions. With no regions the model
computes exactly what the base Qwen2.5-VL computes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Florence2VisionBackbone, GenerationMixin, PreTrainedModel, Qwen2_5_VLForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.vision_utils import get_vision_window_index

from vlmfo1.modeling.configuration_fo1 import FO1Config
from vlmfo1.modeling.region_encoder import RegionEncoder, build_connector


class FO1PreTrainedModel(PreTrainedModel):
    config: FO1Config
    config_class = FO1Config
    base_model_prefix = "fo1"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Florence2VisionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _can_compile_fullgraph = False


class FO1ForConditionalGeneration(FO1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"vlm.lm_head.weight": "vlm.model.language_model.embed_tokens.weight"}

    def __init__(self, config: FO1Config):
        super().__init__(config)
        self.vlm = Qwen2_5_VLForConditionalGeneration._from_config(config.vlm_config)
        self.aux_encoder = (
            Florence2VisionBackbone._from_config(config.aux_encoder_config) if config.use_aux_features else None
        )
        self.region_encoder = RegionEncoder(config)
        out_dim = config.vlm_config.vision_config.out_hidden_size
        text_dim = config.vlm_config.text_config.hidden_size
        self.image_projector = (
            nn.Identity()
            if config.image_projector_type == "identity"
            else build_connector("linear" if config.image_projector_type == "linear" else "mlp2x_gelu", out_dim, text_dim)
        )
        self.post_init()

    # -- plumbing transformers expects -------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.vlm.get_output_embeddings()

    @property
    def visual(self) -> nn.Module:
        return self.vlm.model.visual

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.model.language_model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Loads our own layout, or upstream's (`model_type` `omchat_qwen2_5_vl`) by key/config conversion."""
        from vlmfo1.modeling.conversion import is_upstream_checkpoint, load_upstream_checkpoint

        if is_upstream_checkpoint(pretrained_model_name_or_path):
            return load_upstream_checkpoint(cls, Path(pretrained_model_name_or_path), **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # -- vision ------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """Runs the ViT once. Returns (image embeddings per image, ViT maps [C,H,W] per image per level)."""
        visual = self.visual
        vision = self.config.vlm_config.vision_config
        out = visual(pixel_values.type(visual.dtype), grid_thw=image_grid_thw, output_hidden_states=True)
        split_sizes = (image_grid_thw.prod(-1) // vision.spatial_merge_size**2).tolist()
        image_embeds = torch.split(self.image_projector(out.pooler_output), split_sizes)
        if not self.config.use_primary_features:
            return image_embeds, [None] * len(split_sizes)

        # hidden_states[0] is the patch embedding; block k's output is hidden_states[k + 1], in the
        # window-attention order. Undo that order, then the 2x2 merge-block order, to get raster maps.
        window_index, _ = get_vision_window_index(
            image_grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        unwindow = torch.argsort(window_index)
        unit = vision.spatial_merge_size**2
        levels_per_image: list[list[torch.Tensor]] = [[] for _ in split_sizes]
        for block in self.config.full_attention_layers:
            hidden = out.hidden_states[block + 1]
            hidden = hidden.reshape(-1, unit, hidden.shape[-1])[unwindow].reshape(-1, hidden.shape[-1])
            for i, (chunk, (t, h, w)) in enumerate(
                zip(torch.split(hidden, (image_grid_thw.prod(-1)).tolist()), image_grid_thw.tolist())
            ):
                m = vision.spatial_merge_size
                grid = chunk.reshape(t, h // m, w // m, m, m, -1).permute(0, 5, 1, 3, 2, 4).reshape(t, -1, h, w)
                levels_per_image[i].append(grid[0])
        return image_embeds, levels_per_image

    def encode_aux(self, aux_pixel_values: torch.Tensor) -> list[list[torch.Tensor]]:
        """DaViT stage maps per image: the output of the last block of each stage."""
        stages = self.aux_stage_maps(aux_pixel_values)
        return [[s[i] for s in stages] for i in range(aux_pixel_values.shape[0])]

    def aux_stage_maps(self, aux_pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """DaViT stage maps [N, C_s, H_s, W_s] of the batch, one per stage (channels_last strides)."""
        enc = self.aux_encoder
        out = enc(aux_pixel_values.to(enc.dtype), output_hidden_states=True)
        # hidden_states[0] is the first patch embedding, then one entry per block.
        ends = torch.tensor(self.config.aux_encoder_config.depths).cumsum(0)
        return [out.hidden_states[int(e)] for e in ends]

    def encode_regions(
        self,
        region_boxes: list[torch.Tensor],
        primary_levels: list[list[torch.Tensor] | None],
        aux_maps: list[torch.Tensor] | None,
    ) -> list[torch.Tensor]:
        """Region tokens per image from normalised xyxy boxes, all images in one region-encoder pass.

        region_boxes[i] and primary_levels[i] belong to image i; aux_maps are the DaViT stage maps
        of these images as `aux_stage_maps` gives them (per stage, [N, C, H, W]), or None.
        """
        counts = [boxes.shape[0] for boxes in region_boxes]
        hidden = self.config.vlm_config.text_config.hidden_size
        if sum(counts) == 0:
            return [boxes.new_zeros(0, hidden) for boxes in region_boxes]
        flat_boxes = torch.cat(region_boxes)
        device = flat_boxes.device
        image_index = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
        tokens = self.region_encoder(
            flat_boxes,
            primary_levels=primary_levels,
            aux_stage_maps=aux_maps,
            aux_size=self.config.aux_image_size,
            image_index=image_index,
        )
        return list(tokens.split(counts))

    # -- sequence ----------------------------------------------------------------------------
    def _region_boxes_per_sample(self, counts: list[int], region_boxes) -> list[torch.Tensor]:
        """The boxes of each sample, as many as it has placeholder tokens (`counts`); validates counts."""
        if region_boxes is None:
            region_boxes = [None] * len(counts)
        if len(region_boxes) != len(counts):
            raise ValueError(f"region_boxes has {len(region_boxes)} entries for a batch of {len(counts)} samples")
        per_sample = []
        for i, (n, boxes) in enumerate(zip(counts, region_boxes)):
            available = 0 if boxes is None else boxes.shape[0]
            if n > self.config.max_regions:
                raise ValueError(f"sample {i} has {n} regions; this model holds at most {self.config.max_regions}")
            if available < n:
                raise ValueError(f"sample {i} has {n} region placeholder tokens but only {available} boxes")
            per_sample.append(boxes[:n] if boxes is not None else torch.zeros(0, 4))
        return per_sample

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        aux_pixel_values: torch.Tensor | None = None,
        region_boxes=None,
        region_text_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image tokens and region tokens written into their placeholders."""
        embed = self.get_input_embeddings()
        inputs_embeds = embed(input_ids)
        region_mask = input_ids == self.config.region_token_id
        if region_text_ids is not None:
            inputs_embeds = self._write_text_regions(inputs_embeds, region_mask, region_text_ids)
            region_mask = region_mask & ~(region_text_ids >= 0).flatten(1).any(-1)[:, None]
        has_regions = bool(region_mask.any())
        if pixel_values is None:
            if has_regions:
                raise ValueError("region placeholder tokens need an image (pixel_values)")
            return inputs_embeds

        image_embeds, primary_levels = self.encode_images(pixel_values, image_grid_thw)
        image_mask = input_ids == self.config.vlm_config.image_token_id
        flat_image = torch.cat(image_embeds).to(inputs_embeds.dtype)
        if int(image_mask.sum()) != flat_image.shape[0]:
            raise ValueError(
                f"{int(image_mask.sum())} image tokens in input_ids but the images give {flat_image.shape[0]} features"
            )
        inputs_embeds = inputs_embeds.masked_scatter(image_mask[..., None], flat_image)
        if not has_regions:
            return inputs_embeds

        boxes = self._region_boxes_per_sample(region_mask.sum(-1).tolist(), region_boxes)
        # Images belong, in order, to the samples that contain image tokens.
        samples_with_image = image_mask.any(-1).nonzero().flatten().tolist()
        image_of_sample = {s: k for k, s in enumerate(samples_with_image)}
        per_image_boxes, images_with_regions = [], []
        for sample, sample_boxes in enumerate(boxes):
            if sample_boxes.shape[0] == 0:
                continue
            if sample not in image_of_sample:
                raise ValueError(f"sample {sample} has region tokens but no image")
            per_image_boxes.append(sample_boxes.to(inputs_embeds.device))
            images_with_regions.append(image_of_sample[sample])
        aux_maps = None
        if self.config.use_aux_features:
            if aux_pixel_values is None:
                raise ValueError("region placeholder tokens need the auxiliary encoder's input (aux_pixel_values)")
            # The DaViT sees only the images that have regions (it is per-image, so this is exact).
            if images_with_regions != list(range(aux_pixel_values.shape[0])):
                aux_pixel_values = aux_pixel_values[images_with_regions]
            aux_maps = self.aux_stage_maps(aux_pixel_values)
        tokens = self.encode_regions(per_image_boxes, [primary_levels[k] for k in images_with_regions], aux_maps)
        flat_regions = torch.cat(tokens).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(region_mask[..., None], flat_regions)

    def _write_text_regions(self, inputs_embeds, region_mask, region_text_ids) -> torch.Tensor:
        """Fills the region slots of the samples that have region texts ([B, R, W] ids, -1 padded) with
        the sum of each text's token embeddings (`FO1Record.region_text`, a training curriculum)."""
        if region_text_ids.dim() != 3 or region_text_ids.shape[0] != inputs_embeds.shape[0]:
            raise ValueError(f"region_text_ids must be [batch, regions, words], got {tuple(region_text_ids.shape)}")
        present = region_text_ids >= 0
        texts_per_sample = present.any(-1).sum(-1)
        has_texts = texts_per_sample > 0
        slots = region_mask.sum(-1)
        if bool((slots[has_texts] != texts_per_sample[has_texts]).any()):
            raise ValueError(f"region slots {slots.tolist()} and region texts {texts_per_sample.tolist()} differ")
        words = self.get_input_embeddings()(region_text_ids.clamp(min=0)) * present[..., None]
        texts = words.sum(-2)[present.any(-1)]  # [texts in the batch, D], in sample then slot order
        mask = region_mask & has_texts[:, None]
        return inputs_embeds.masked_scatter(mask[..., None], texts.to(inputs_embeds.dtype))

    def get_rope_index(self, input_ids: torch.LongTensor, image_grid_thw, attention_mask=None):
        """M-RoPE positions [3, B, L] and deltas [B, 1]: the image 3-D, everything else (regions too) 1-D."""
        mm_token_type_ids = (input_ids == self.config.vlm_config.image_token_id).int()
        return self.vlm.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )

    def _decode_position_ids(self, inputs_embeds, attention_mask, past_key_values) -> torch.Tensor | None:
        """Positions of tokens after a cached prefix: 1-D text positions shifted by the stored rope delta."""
        deltas = self.vlm.model.rope_deltas
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if deltas is None or past == 0:
            return None
        batch, length = inputs_embeds.shape[:2]
        if attention_mask is not None and attention_mask.shape[-1] == past + length:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        else:
            positions = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, -1)
        positions = positions + deltas.to(positions.device)
        return positions[None].expand(3, -1, -1)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        aux_pixel_values: torch.Tensor | None = None,
        region_boxes=None,
        region_text_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        pixel_values / image_grid_thw: the primary (Qwen2.5-VL) image input, as its processor makes it.
        aux_pixel_values: [num_images, 3, S, S] auxiliary-encoder input.
        region_boxes: per sample, normalised xyxy boxes ([B, R, 4] padded tensor or a list of [n_i, 4]);
            sample i uses as many as it has region placeholder tokens.
        region_text_ids: [B, R, W] token ids, -1 padded (training only, `FO1Record.region_text`): the
            region slots of a sample with texts hold the sum of its texts' token embeddings instead.
        """
        kwargs.pop("mm_token_type_ids", None)  # recomputed from input_ids; kept only for generate()
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw, aux_pixel_values, region_boxes,
                                              region_text_ids)
            prefill = past_key_values is None or past_key_values.get_seq_length() == 0
            if position_ids is None and prefill:
                # With no image this gives plain text positions; computing them here also replaces a
                # rope delta left over from an earlier batch, which would not fit this one.
                has_image = image_grid_thw is not None and pixel_values is not None
                position_ids, rope_deltas = self.get_rope_index(input_ids, image_grid_thw if has_image else None, attention_mask)
                self.vlm.model.rope_deltas = rope_deltas
        if position_ids is None:
            position_ids = self._decode_position_ids(inputs_embeds, attention_mask, past_key_values)
        if labels is not None and input_ids is not None:
            # Image and region slots are inputs, never targets.
            ignore = (input_ids == self.config.vlm_config.image_token_id) | (input_ids == self.config.region_token_id)
            labels = labels.masked_fill(ignore, -100)
        return self.vlm(
            input_ids=None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    # -- generation --------------------------------------------------------------------------
    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """[4, B, L] positions (text row + M-RoPE rows) for the prompt, as Qwen2.5-VL's generate uses."""
        text_positions = super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        input_ids = model_kwargs.get("input_ids", inputs_tensor)
        grid = model_kwargs.get("image_grid_thw")
        if grid is None or input_ids is None or input_ids.dim() != 2 or input_ids.dtype not in (torch.int, torch.long):
            self.vlm.model.rope_deltas = torch.zeros(text_positions.shape[0], 1, dtype=torch.long)
            return text_positions
        mrope, deltas = self.get_rope_index(input_ids, grid, model_kwargs.get("attention_mask"))
        self.vlm.model.rope_deltas = deltas
        return torch.cat([text_positions[None], mrope], dim=0)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            # Images and regions are already in the KV cache after the prefill.
            for key in ("pixel_values", "aux_pixel_values", "region_boxes", "image_grid_thw"):
                model_inputs[key] = None
        return model_inputs


__all__ = ["FO1ForConditionalGeneration", "FO1PreTrainedModel"]
