"""FO1Config: the base VLM's config plus the settings of the Hybrid Fine-grained Region Encoder."""
from __future__ import annotations

from transformers import AutoConfig, Florence2VisionConfig, PreTrainedConfig, Qwen2_5_VLConfig

from vlmfo1.prompts import MAX_REGIONS

CONNECTOR_TYPES = ("linear", "mlp2x_gelu", "mlp3x_gelu")
IMAGE_PROJECTOR_TYPES = ("identity", "linear", "mlp2x_gelu")


def florence2_large_davit_config(**overrides) -> Florence2VisionConfig:
    """DaViT as in Florence-2 large (SPEC §2.2): the auxiliary encoder of the released model."""
    settings = dict(
        depths=[1, 1, 9, 1],
        embed_dim=[256, 512, 1024, 2048],
        num_heads=[8, 16, 32, 64],
        num_groups=[8, 16, 32, 64],
        window_size=12,
        patch_size=[7, 3, 3, 3],
        patch_stride=[4, 2, 2, 2],
        patch_padding=[3, 1, 1, 1],
        patch_prenorm=[False, True, True, True],
        drop_path_rate=0.0,
    )
    settings.update(overrides)
    return Florence2VisionConfig(**settings)


class FO1Config(PreTrainedConfig):
    r"""Configuration of [`FO1ForConditionalGeneration`].

    Args:
        vlm_config: config of the base `Qwen2_5_VLForConditionalGeneration` (its ViT is the primary
            vision encoder, its LM answers).
        aux_encoder_config: `Florence2VisionConfig` of the auxiliary DaViT encoder.
        aux_image_size: side of the square (aspect-squashed) auxiliary input.
        use_aux_features / use_primary_features: which branches feed the region features
            (both on in the released model; one off for the ablations of paper Table 8).
        use_simple_fp: SimpleFP pyramid on the last full-attention ViT map; off concatenates all
            full-attention maps on channels instead.
        simple_fp_dim: channels of each SimpleFP level (512 in the released model).
        roi_output_size: RoIAlign output side before mean pooling.
        use_position_embedding: add the sine embedding of the box to the region feature.
        use_region_layer_norm: LayerNorm on each branch's region feature before fusion.
        connector_type: region → LLM connector (`mlp2x_gelu` in the released model).
        image_projector_type: applied to the ViT merger output (`identity` unless a checkpoint says
            otherwise; upstream's `mm_projector`).
        region_token_template: index tokens the LLM sees and names in its answers.
        region_placeholder_token: the text token whose embedding is replaced by a region feature.
        region_token_id: id of `region_placeholder_token` in the tokenizer (set by the processor).
        max_regions: region index tokens available, hence regions per sample.
    """

    model_type = "vlmfo1"
    sub_configs_defaults = {"vlm_config": Qwen2_5_VLConfig, "aux_encoder_config": Florence2VisionConfig}

    vlm_config: dict | PreTrainedConfig | None = None
    aux_encoder_config: dict | PreTrainedConfig | None = None
    aux_image_size: int = 768
    use_aux_features: bool = True
    use_primary_features: bool = True
    use_simple_fp: bool = True
    simple_fp_dim: int = 512
    roi_output_size: int = 7
    use_position_embedding: bool = True
    use_region_layer_norm: bool = True
    connector_type: str = "mlp2x_gelu"
    image_projector_type: str = "identity"
    region_token_template: str = "<region{}>"
    region_placeholder_token: str = "<regionfeat>"
    region_token_id: int | None = None
    max_regions: int = MAX_REGIONS
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.aux_encoder_config is None:
            self.aux_encoder_config = florence2_large_davit_config()
        super().__post_init__(**kwargs)
        # Tying is decided by the base VLM (Qwen2.5-VL 3B ties its LM head to the embeddings).
        self.tie_word_embeddings = bool(self.vlm_config.tie_word_embeddings)
        self.validate_hfre()

    def validate_hfre(self) -> None:
        if not (self.use_aux_features or self.use_primary_features):
            raise ValueError("FO1Config: at least one of use_aux_features / use_primary_features must be true")
        if self.connector_type not in CONNECTOR_TYPES:
            raise ValueError(f"FO1Config: connector_type must be one of {CONNECTOR_TYPES}, got {self.connector_type!r}")
        if self.image_projector_type not in IMAGE_PROJECTOR_TYPES:
            raise ValueError(
                f"FO1Config: image_projector_type must be one of {IMAGE_PROJECTOR_TYPES}, got {self.image_projector_type!r}"
            )
        if self.use_position_embedding and self.region_hidden_size % 8:
            raise ValueError(
                f"FO1Config: the box sine embedding splits region_hidden_size={self.region_hidden_size} into 4 "
                "coordinates of sin/cos pairs, so it must be a multiple of 8"
            )

    # The base VLM's text config serves generation (cache sizes, eos) exactly as for Qwen2.5-VL.
    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        return self.vlm_config.get_text_config(decoder=decoder, encoder=encoder)

    @property
    def full_attention_layers(self) -> list[int]:
        """ViT blocks whose outputs feed the primary region branch."""
        return list(self.vlm_config.vision_config.fullatt_block_indexes)

    @property
    def aux_region_dim(self) -> int:
        return sum(self.aux_encoder_config.embed_dim) if self.use_aux_features else 0

    @property
    def primary_region_dim(self) -> int:
        if not self.use_primary_features:
            return 0
        if self.use_simple_fp:
            return 4 * self.simple_fp_dim
        return len(self.full_attention_layers) * self.vlm_config.vision_config.hidden_size

    @property
    def region_hidden_size(self) -> int:
        """Width of the fused region feature [aux | primary] before the connector."""
        return self.aux_region_dim + self.primary_region_dim

    def region_token(self, index: int) -> str:
        return self.region_token_template.format(index)


# So that AutoConfig / AutoTokenizer can read an FO1 folder's config.json.
AutoConfig.register(FO1Config.model_type, FO1Config, exist_ok=True)

__all__ = ["FO1Config", "florence2_large_davit_config"]
