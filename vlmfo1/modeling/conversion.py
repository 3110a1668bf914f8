"""Reading checkpoints in upstream VLM-FO1's layout (`model_type` `omchat_qwen2_5_vl`).

Upstream keeps a flat Qwen2.5-VL config with `mm_*` fields and these state-dict prefixes:

| upstream key                                          | ours                                     |
|-------------------------------------------------------|------------------------------------------|
| `model.embed_tokens/layers/norm.*`                    | `vlm.model.language_model.*`             |
| `lm_head.weight` (absent when tied)                   | `vlm.lm_head.weight`                     |
| `model.vision_tower.image_tower.*`                    | `vlm.model.visual.*`                     |
| `model.vision_tower_aux.image_tower.convs.S.proj.*`   | `aux_encoder.convs.S.conv.*`             |
| `...blocks.S.D.{spatial,channel}_block.convK.fn.dw.*` | `aux_encoder.blocks.S.D.*_block.convK.*` |
| `...{window,channel}_attn.norm.*` / `ffn.norm.*`      | `norm1.*` / `norm2.*`                    |
| `...{window,channel}_attn.fn.*` / `ffn.fn.net.*`      | `{window,channel}_attn.*` / `ffn.*`      |
| `model.object_vp_extractor.aux_region_norm.*`         | `region_encoder.aux_norm.*`              |
| `model.object_vp_extractor.vt_region_norm.*`          | `region_encoder.primary_norm.*`          |
| `model.object_vp_extractor.simple_fpn.*`              | `region_encoder.simple_fp.*`             |
| `model.mm_projector_aux.*`                            | `region_encoder.connector.*`             |
| `model.mm_projector.*` (none when identity)           | `image_projector.*`                      |

Upstream's config does not record the DaViT layout, only its name (`mm_vision_tower_aux`):
`davit-base` and `davit-large` are known here; any other needs `aux_encoder_config=`. The region
placeholder token id comes from the tokenizer (in the folder, or `tokenizer_path=`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Florence2VisionConfig, Qwen2_5_VLConfig

from vlmfo1.modeling.configuration_fo1 import FO1Config, florence2_large_davit_config

UPSTREAM_MODEL_TYPE = "omchat_qwen2_5_vl"

# Ordered: the first matching rule renames a key.
UPSTREAM_KEY_RULES: list[tuple[str, str]] = [
    (r"^model\.vision_tower\.image_tower\.", "vlm.model.visual."),
    (r"^model\.vision_tower_aux\.image_tower\.convs\.(\d+)\.proj\.", r"aux_encoder.convs.\1.conv."),
    (r"^model\.vision_tower_aux\.image_tower\.convs\.", "aux_encoder.convs."),
    (r"^model\.vision_tower_aux\.image_tower\.(blocks\.\d+\.\d+\.\w+_block)\.(conv\d)\.fn\.dw\.", r"aux_encoder.\1.\2."),
    (r"^model\.vision_tower_aux\.image_tower\.(blocks\.\d+\.\d+\.\w+_block)\.(window|channel)_attn\.norm\.", r"aux_encoder.\1.norm1."),
    (r"^model\.vision_tower_aux\.image_tower\.(blocks\.\d+\.\d+\.\w+_block)\.(window|channel)_attn\.fn\.", r"aux_encoder.\1.\2_attn."),
    (r"^model\.vision_tower_aux\.image_tower\.(blocks\.\d+\.\d+\.\w+_block)\.ffn\.norm\.", r"aux_encoder.\1.norm2."),
    (r"^model\.vision_tower_aux\.image_tower\.(blocks\.\d+\.\d+\.\w+_block)\.ffn\.fn\.net\.", r"aux_encoder.\1.ffn."),
    (r"^model\.object_vp_extractor\.aux_region_norm\.", "region_encoder.aux_norm."),
    (r"^model\.object_vp_extractor\.vt_region_norm\.", "region_encoder.primary_norm."),
    (r"^model\.object_vp_extractor\.simple_fpn\.", "region_encoder.simple_fp."),
    (r"^model\.mm_projector_aux\.", "region_encoder.connector."),
    (r"^model\.mm_projector\.(weight|bias)$", r"image_projector.0.\1"),
    (r"^model\.mm_projector\.", "image_projector."),
    (r"^lm_head\.", "vlm.lm_head."),
    (r"^model\.", "vlm.model.language_model."),
]

KNOWN_DAVIT = {
    "davit-large": lambda: florence2_large_davit_config(),
    "davit-base": lambda: florence2_large_davit_config(
        embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32]
    ),
}

# Text-model and token fields of upstream's flat config that belong to Qwen2.5-VL.
_QWEN_FIELDS = (
    "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads "
    "hidden_act max_position_embeddings initializer_range rms_norm_eps use_cache tie_word_embeddings rope_theta "
    "rope_scaling use_sliding_window sliding_window max_window_layers attention_dropout bos_token_id eos_token_id "
    "pad_token_id image_token_id video_token_id vision_start_token_id vision_end_token_id vision_config"
).split()


def davit_config_from_upstream(davit: dict) -> Florence2VisionConfig:
    """Upstream's DaViT settings dict (`dim_embed`, `num_heads`, ...) as a Florence2VisionConfig."""
    return florence2_large_davit_config(
        depths=list(davit["depths"]),
        embed_dim=list(davit["dim_embed"]),
        num_heads=list(davit["num_heads"]),
        num_groups=list(davit["num_groups"]),
        window_size=davit.get("window_size", 12),
        patch_size=list(davit["patch_size"]),
        patch_stride=list(davit["patch_stride"]),
        patch_padding=list(davit["patch_padding"]),
        patch_prenorm=list(davit["patch_prenorm"]),
    )


def convert_upstream_key(key: str) -> str:
    for pattern, replacement in UPSTREAM_KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise KeyError(f"upstream key {key!r} matches no conversion rule")


def is_upstream_checkpoint(path) -> bool:
    config_file = Path(str(path)) / "config.json"
    if not config_file.is_file():
        return False
    return json.loads(config_file.read_text()).get("model_type") == UPSTREAM_MODEL_TYPE


def load_upstream_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return {convert_upstream_key(k): v for k, v in state.items()}


def _region_token_id(folder: Path, tokenizer_path) -> int:
    from vlmfo1.processing.tokenization import load_fo1_tokenizer

    source = tokenizer_path or folder
    if not (Path(source) / "tokenizer_config.json").exists():
        raise ValueError(
            f"{folder} has no tokenizer files; pass tokenizer_path= (the region placeholder id depends on the "
            "tokenizer the checkpoint was trained with)"
        )
    tokenizer = load_fo1_tokenizer(source)
    return tokenizer.convert_tokens_to_ids(FO1Config().region_placeholder_token)


def convert_upstream_config(
    upstream: dict,
    state_dict: dict[str, torch.Tensor],
    region_token_id: int,
    aux_encoder_config: Florence2VisionConfig | dict | None = None,
) -> FO1Config:
    combination = upstream.get("mm_region_feature_combination", "concat")
    if combination != "concat":
        raise NotImplementedError(f"upstream region feature combination {combination!r}: only 'concat' is supported")
    if upstream.get("mm_pos_embedding_strategy", "bbox_based") != "bbox_based":
        raise NotImplementedError(f"position embedding strategy {upstream['mm_pos_embedding_strategy']!r}")
    if not upstream.get("mm_use_region_index_token", False):
        raise ValueError("upstream config has mm_use_region_index_token false: upstream ignores boxes for it")

    vlm_fields = {k: upstream[k] for k in _QWEN_FIELDS if k in upstream}
    vlm_config = Qwen2_5_VLConfig(**vlm_fields)

    use_aux = not upstream.get("mm_use_vt_region_feature_only", False)
    if aux_encoder_config is None and use_aux:
        name = upstream.get("mm_vision_tower_aux", "")
        if name not in KNOWN_DAVIT:
            raise ValueError(
                f"unknown auxiliary encoder {name!r}: pass aux_encoder_config= (a Florence2VisionConfig); "
                f"known: {sorted(KNOWN_DAVIT)}"
            )
        aux_encoder_config = KNOWN_DAVIT[name]()
    if isinstance(aux_encoder_config, dict):
        aux_encoder_config = (
            davit_config_from_upstream(aux_encoder_config)
            if "dim_embed" in aux_encoder_config
            else Florence2VisionConfig(**aux_encoder_config)
        )

    simple_fp_key = "region_encoder.simple_fp.simfp_3.0.weight"
    config = FO1Config(
        vlm_config=vlm_config,
        aux_encoder_config=aux_encoder_config,
        aux_image_size=upstream.get("aux_image_size", 768),
        use_aux_features=use_aux,
        use_primary_features=upstream.get("mm_use_vision_tower_region_feature", True),
        use_simple_fp=upstream.get("mm_use_simpleFPN_for_vt", False),
        # upstream hard-codes 512; the weights tell the real width
        simple_fp_dim=state_dict[simple_fp_key].shape[0] if simple_fp_key in state_dict else 512,
        roi_output_size=upstream.get("mm_roi_output_size", 7),
        use_position_embedding=upstream.get("mm_apply_position_embedding", False),
        use_region_layer_norm=upstream.get("mm_apply_region_layer_norm", False),
        connector_type=upstream.get("mm_projector_aux_type", "mlp2x_gelu"),
        # upstream builds a Linear when the type is absent
        image_projector_type=upstream.get("mm_projector_type", "linear"),
        region_token_id=region_token_id,
        tie_word_embeddings=upstream.get("tie_word_embeddings", False),
    )
    declared = upstream.get("mm_region_hidden_size")
    if declared is not None and declared != config.region_hidden_size:
        raise ValueError(
            f"upstream mm_region_hidden_size={declared} but the converted layout gives {config.region_hidden_size}"
        )
    return config


def load_upstream_checkpoint(cls, folder: Path, tokenizer_path=None, aux_encoder_config=None, **kwargs):
    """Builds `cls` (FO1ForConditionalGeneration) from an upstream-layout folder."""
    upstream = json.loads((folder / "config.json").read_text())
    state_dict = load_upstream_state_dict(folder)
    config = convert_upstream_config(upstream, state_dict, _region_token_id(folder, tokenizer_path), aux_encoder_config)
    model, info = super(cls, cls).from_pretrained(
        None, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
    )
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    problems.get("missing_keys", set()).discard("vlm.lm_head.weight") if config.tie_word_embeddings else None
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise ValueError(f"upstream checkpoint {folder} does not fit the converted model: {problems}")
    model.config.name_or_path = str(folder)
    return model
