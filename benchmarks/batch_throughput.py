"""Images per second of `FO1Pipeline.run` at batch 1, 4 and 8 (one detection question per image).

Every image is a different ShapeWorld scene with its own number of regions (so a batch is left-padded
and mixes region counts). The same requests run at each batch size; the script reports whether the
answers agree across batch sizes (they should, up to float rounding in a random model's argmax).

    python benchmarks/batch_throughput.py [--size small] [--images 16] [--image 448] [--aux-size 768]
                                          [--batches 1 4 8] [--max-new-tokens 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vlmfo1.data.shapeworld import ShapeWorldConfig, generate_scene
from vlmfo1.pipeline import FO1Pipeline, TaskRequest
from vlmfo1.training.tiny import init_tiny


def random_boxes(n: int, width: int, height: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [width - 8, height - 8], size=(n, 2))
    wh = rng.uniform(8, [width / 3, height / 3], size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, [width, height])], axis=1).round(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "mid"])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--image", type=int, default=448, help="image side in pixels")
    parser.add_argument("--aux-size", type=int, default=768, help="auxiliary encoder input side")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-new-tokens", type=int, default=10, help="answer length (a random model never stops early)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = init_tiny(None, size=args.size, tokenizer="qwen", max_pixels=args.image * args.image,
                                 aux_image_size=args.aux_size, seed=0)
    model.eval()
    world = ShapeWorldConfig.train(image_size=(args.image, args.image))
    rng = np.random.default_rng(0)
    requests = []
    for index in range(args.images):
        image = generate_scene(world, index=index, seed=0, split="bench").image
        boxes = random_boxes(int(rng.integers(10, 101)), args.image, args.image, index)
        requests.append(TaskRequest("detect", image, {"categories": "red circle, blue star", "boxes": boxes}))

    answers = {}
    print(f"config: {args.size}, image {args.image}x{args.image}, aux {args.aux_size}, {args.images} images with "
          f"10-100 regions each, {args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    for batch_size in args.batches:
        pipeline = FO1Pipeline(model, processor, proposer=None, max_new_tokens=args.max_new_tokens, batch_size=batch_size)
        pipeline.run(requests[:batch_size])  # warm-up
        start = time.perf_counter()
        results = pipeline.run(requests)
        elapsed = time.perf_counter() - start
        answers[batch_size] = [r.raw_answers for r in results]
        print(f"batch {batch_size:2d}: {args.images / elapsed:6.3f} images/s  ({elapsed:.2f} s for {args.images} images)")
    first = args.batches[0]
    agree = [sum(a == b for a, b in zip(answers[first], answers[k])) for k in args.batches]
    print("answers equal to batch", first, "at each batch size:", ", ".join(f"{n}/{args.images}" for n in agree))


if __name__ == "__main__":
    main()
