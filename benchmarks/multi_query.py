"""80 single-category detection questions on one image: shared-prefix reuse vs. 80 independent calls.

Both runs go through `FO1Pipeline.detect(..., per_category=True)` with the same random model, image,
boxes and greedy decoding; only `reuse_prefix` (and the question batch) differs. Independent = what
upstream does: every question re-encodes the image and regions (ViT, DaViT, region encoder, LLM
prefill). Reuse = encode once, keep the KV cache of the shared prefix, run only each question's
suffix, `--batch-size` questions at a time. The answers must be identical; the script checks it.

    python benchmarks/multi_query.py [--size mid] [--image 448] [--aux-size 768] [--regions 50]
                                     [--questions 80] [--max-new-tokens 10] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from PIL import Image

from vlmfo1.data.shapeworld import ShapeWorldConfig, generate_scene
from vlmfo1.data.shapeworld.vocab import COLOURS, SHAPES
from vlmfo1.pipeline import FO1Pipeline
from vlmfo1.training.tiny import init_tiny


def random_boxes(n: int, width: int, height: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width - 8, height - 8], size=(n, 2))
    wh = rng.uniform(8, [width / 3, height / 3], size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).round(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid"])
    parser.add_argument("--image", type=int, default=448, help="image side in pixels (primary encoder input)")
    parser.add_argument("--aux-size", type=int, default=768, help="auxiliary encoder input side")
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--questions", type=int, default=80, help="at most 80 (colour x shape categories)")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="answer length (a random model never stops early)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per forward in the reuse run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = init_tiny(None, size=args.size, tokenizer="qwen", max_pixels=args.image * args.image,
                                 aux_image_size=args.aux_size, seed=0)
    model.eval()
    scene = generate_scene(ShapeWorldConfig.train(image_size=(args.image, args.image)), index=0, seed=0, split="bench")
    image: Image.Image = scene.image
    boxes = random_boxes(args.regions, args.image, args.image, 0)
    categories = [f"{c} {s}" for s, c in itertools.product(SHAPES, COLOURS)][: args.questions]

    def run(reuse: bool, batch_size: int):
        pipeline = FO1Pipeline(
            model, processor, proposer=None, max_new_tokens=args.max_new_tokens, batch_size=batch_size, reuse_prefix=reuse
        )
        start = time.perf_counter()
        result = pipeline.detect(image, categories, boxes=boxes, per_category=True)
        return time.perf_counter() - start, result

    run(True, args.batch_size)  # warm-up (allocator, kernels)
    reuse_time, reused = run(True, args.batch_size)
    independent_time, independent = run(False, 1)
    if reused.raw_answers != independent.raw_answers:
        raise SystemExit("the reuse run answered differently from the independent calls")

    print(f"config: {args.size}, image {args.image}x{args.image}, aux {args.aux_size}, {args.regions} regions, "
          f"{len(categories)} questions, {args.max_new_tokens} new tokens each, torch threads {torch.get_num_threads()}")
    print(f"independent calls:      {independent_time:8.2f} s  ({independent_time / len(categories):.3f} s per question)")
    print(f"shared prefix (batch {args.batch_size}): {reuse_time:8.2f} s  ({reuse_time / len(categories):.3f} s per question)")
    print(f"answers identical: yes; speed-up: {independent_time / reuse_time:.1f}x")


if __name__ == "__main__":
    main()
