"""Speed and recall@100 of the classical proposers on generated scenes at 320, 640 and 1280 px.

    python benchmarks/proposals.py                       # both proposers, 20 scenes per setting
    python benchmarks/proposals.py --proposers contours --scenes 5
    python benchmarks/proposals.py --proposers contours --widths 640 --first-seed 2000 --option size_prior=0

First prints how long the shared post-processing (clip, NMS at 0.8, top 100) takes on
`--postprocess-boxes` random boxes (median of 5), the case of a detector that returns many boxes.
Then, per proposer, image width and scene kind (plain / cluttered background): images/s,
proposals/s (boxes returned per second), mean proposals per image, and recall@100 at IoU 0.5
(share of objects matched by one of the first 100 proposals). Scenes: `vlmfo1.proposals.scenes`
(4:3 images, 3-8 well-separated shapes each).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from vlmfo1.proposals import Proposals, build_proposer, postprocess
from vlmfo1.proposals.base import _torchvision_nms
from vlmfo1.proposals.scenes import make_scene, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proposers", nargs="+", default=["selective-search", "contours"])
    parser.add_argument("--widths", nargs="+", type=int, default=[320, 640, 1280])
    parser.add_argument("--scenes", type=int, default=20, help="scenes per (width, kind)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first scene")
    parser.add_argument("--postprocess-boxes", type=int, default=12000, help="boxes for the post-processing timing (0: skip)")
    parser.add_argument("--option", action="append", default=[], help="proposer option KEY=JSON, e.g. size_prior=0")
    args = parser.parse_args()
    options = {key: json.loads(value) for key, _, value in (pair.partition("=") for pair in args.option)}

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    if args.postprocess_boxes:
        time_postprocess(args.postprocess_boxes)
    print(f"{'proposer':<18}{'width':>6} {'scenes':<10}{'img/s':>8}{'props/s':>10}{'props/img':>10}{'recall@' + str(args.top_k):>12}")
    for spec in args.proposers:
        proposer = build_proposer(spec, postprocess={"top_k": args.top_k}, **options)
        proposer.propose(make_scene(0, (320, 240))[0])  # warm-up: imports, thread pools
        for width in args.widths:
            size = (width, width * 3 // 4)
            for clutter in (False, True):
                scenes = [make_scene(seed, size, clutter=clutter) for seed in range(args.first_seed, args.first_seed + args.scenes)]
                recalls, counts = [], []
                start = time.perf_counter()
                for image, boxes in scenes:
                    proposals = proposer.propose(image)
                    counts.append(len(proposals))
                    recalls.append(recall(boxes, proposals.boxes, iou=0.5))
                elapsed = time.perf_counter() - start
                kind = "cluttered" if clutter else "plain"
                print(
                    f"{spec:<18}{width:>6} {kind:<10}{len(scenes) / elapsed:>8.2f}{sum(counts) / elapsed:>10.0f}"
                    f"{np.mean(counts):>10.1f}{np.mean(recalls):>12.3f}",
                    flush=True,
                )


def time_postprocess(count: int, repeats: int = 5) -> None:
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 1000, (count, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (count, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, count).astype(np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kept = postprocess(Proposals(boxes, scores), (1100, 1100))
        times.append(time.perf_counter() - start)
    nms = "vlmfo1's NMS" if _torchvision_nms() is None else "torchvision.ops.nms"
    print(f"# post-processing {count} boxes ({nms}): {1000 * float(np.median(times)):.1f} ms median of {repeats}, kept {len(kept)}")


if __name__ == "__main__":
    main()
