"""Small FO1 configurations for tests, demos and CPU experiments (random weights, nothing downloaded)."""
from __future__ import annotations

from transformers import Florence2VisionConfig, Qwen2_5_VLConfig

from vlmfo1.modeling.configuration_fo1 import FO1Config

# Token ids of the Qwen2.5-VL vocabulary, which every FO1 tokenizer keeps.
QWEN_SPECIAL_IDS = dict(
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
)

SIZES = {
    # name: (text hidden, text layers, heads, kv heads, vit hidden, vit depth, vit heads, davit dims, simple_fp_dim)
    "tiny": (32, 2, 4, 2, 32, 4, 2, (16, 32, 64, 128), 16),
    "small": (128, 4, 4, 2, 64, 4, 4, (32, 64, 128, 256), 64),
    "mid": (512, 8, 8, 4, 256, 8, 4, (64, 128, 256, 512), 128),
    # The bundled ShapeWorld demo model (vlmfo1/assets/shapeworld-fo1): trains on a CPU in minutes.
    "demo": (160, 4, 4, 2, 64, 4, 4, (24, 48, 96, 192), 32),
}


def special_token_ids(tokenizer) -> dict[str, int]:
    """The Qwen special-token ids of a tokenizer (a locally trained small one has its own)."""
    ids = {
        "bos_token_id": "<|endoftext|>",
        "eos_token_id": "<|im_end|>",
        "pad_token_id": "<|endoftext|>",
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    vocab = tokenizer.get_vocab()
    missing = [token for token in ids.values() if token not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks the Qwen special tokens {missing}")
    return {name: vocab[token] for name, token in ids.items()}


def small_fo1_config(
    size: str = "tiny",
    vocab_size: int = 151936,
    region_token_id: int = 151773,
    tokenizer=None,
    aux_image_size: int = 256,
    use_simple_fp: bool = True,
    use_aux_features: bool = True,
    use_primary_features: bool = True,
    tie_word_embeddings: bool = True,
    rope_theta: float = 1000000.0,
    **overrides,
) -> FO1Config:
    """A Qwen2.5-VL-shaped FO1 of the given size.

    With `tokenizer` (an FO1 tokenizer, see `load_fo1_tokenizer`), the vocabulary size and every special
    token id come from it; otherwise they are Qwen2.5's and `vocab_size`/`region_token_id` must fit.
    """
    special = QWEN_SPECIAL_IDS
    if tokenizer is not None:
        from vlmfo1.processing.tokenization import REGION_PLACEHOLDER_TOKEN

        special = special_token_ids(tokenizer)
        vocab_size = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, as Qwen's table is
        region_token_id = tokenizer.convert_tokens_to_ids(REGION_PLACEHOLDER_TOKEN)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    hidden, layers, heads, kv_heads, vit_hidden, vit_depth, vit_heads, davit_dims, fp_dim = SIZES[size]
    head_dim = hidden // heads
    # M-RoPE splits head_dim/2 frequencies into (t, h, w) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 4), half // 4, half // 4]
    vlm_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=32768,
            rope_scaling={"type": "mrope", "mrope_section": mrope_section},
            rope_theta=rope_theta,
            initializer_range=0.02,
            **{k: v for k, v in special.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        ),
        vision_config=dict(
            depth=vit_depth,
            hidden_size=vit_hidden,
            intermediate_size=vit_hidden * 2,
            num_heads=vit_heads,
            out_hidden_size=hidden,
            fullatt_block_indexes=list(range(vit_depth // 4 - 1, vit_depth, max(vit_depth // 4, 1))),
            window_size=112,
            initializer_range=0.02,
        ),
        tie_word_embeddings=tie_word_embeddings,
        **special,
    )
    aux = Florence2VisionConfig(
        depths=[1, 1, 1, 1],
        embed_dim=list(davit_dims),
        num_heads=[max(d // 16, 1) for d in davit_dims],
        num_groups=[max(d // 16, 1) for d in davit_dims],
        window_size=12,
        patch_size=[7, 3, 3, 3],
        patch_stride=[4, 2, 2, 2],
        patch_padding=[3, 1, 1, 1],
        patch_prenorm=[False, True, True, True],
        drop_path_rate=0.0,
    )
    return FO1Config(
        vlm_config=vlm_config,
        aux_encoder_config=aux,
        aux_image_size=aux_image_size,
        use_simple_fp=use_simple_fp,
        simple_fp_dim=fp_dim,
        use_aux_features=use_aux_features,
        use_primary_features=use_primary_features,
        region_token_id=region_token_id,
        **overrides,
    )
