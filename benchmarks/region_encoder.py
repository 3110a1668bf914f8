"""Region-encoding time vs. prefill time for 10/50/100 regions on a mid-size CPU config.

Region encoding = what FO1 adds to the base VLM: the auxiliary DaViT, SimpleFP, RoIAlign and the
connector. Prefill = the whole forward pass over the prompt (ViT, region encoding, LLM).

    python benchmarks/region_encoder.py [--size mid] [--image 448] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
from vlmfo1.modeling.factory import small_fo1_config
from vlmfo1.processing.image_processing import FO1ImageProcessor
from vlmfo1.processing.tokenization import find_qwen_tokenizer_dir, load_fo1_tokenizer
from vlmfo1.prompts import detection_prompt


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid"])
    parser.add_argument("--image", type=int, default=448, help="image side in pixels")
    parser.add_argument("--aux-size", type=int, default=768, help="auxiliary encoder input side")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = load_fo1_tokenizer(find_qwen_tokenizer_dir())
    processor = FO1Processor(
        FO1ImageProcessor(min_pixels=56 * 56, max_pixels=args.image * args.image, aux_image_size=args.aux_size),
        tokenizer,
    )
    config = small_fo1_config(
        args.size, vocab_size=len(tokenizer), region_token_id=processor.region_token_id, aux_image_size=args.aux_size
    )
    model = FO1ForConditionalGeneration(config).eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.image, args.image, 3), dtype=np.uint8))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"config={args.size} params={params:.1f}M image={args.image}px aux={args.aux_size}px threads={torch.get_num_threads()}")
    print(f"{'regions':>8} {'prompt_len':>10} {'region_enc_ms':>14} {'prefill_ms':>11} {'ratio':>7}")
    for n in (10, 50, 100):
        xy = rng.uniform(0, args.image * 0.8, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(8, args.image * 0.2, size=(n, 2))], 1).tolist()
        inputs = processor(images=image, boxes=boxes, text=detection_prompt("red circle"))
        with torch.no_grad():
            _, levels = model.encode_images(inputs["pixel_values"], inputs["image_grid_thw"])
            region_boxes = [inputs["region_boxes"][0]]

            def encode_regions():
                aux = model.aux_stage_maps(inputs["aux_pixel_values"])
                model.encode_regions(region_boxes, levels, aux)

            region_s = timed(encode_regions, args.repeats)
            prefill_s = timed(lambda: model(**inputs), args.repeats)
        print(
            f"{n:>8} {inputs['input_ids'].shape[1]:>10} {region_s * 1e3:>14.1f} {prefill_s * 1e3:>11.1f} "
            f"{region_s / prefill_s:>7.1%}"
        )


if __name__ == "__main__":
    main()
