"""Time vlmfo1's RoIAlign on FO1-sized maps; prints milliseconds per call.

    python benchmarks/roi_align_speed.py [--device cuda] [--boxes 100] [--repeats 3] [--threads N]

Maps: the DaViT-large aux map of a 768x768 image (3840 x 192 x 192, scale 1/4) and one
SimpleFP level of a ~1000x750 primary image (512 x 54 x 72, scale 1/14). Boxes are
100 proposals with log-uniform sides from 16 px to 60% of the image.
"""

from __future__ import annotations

import argparse
import time

import torch

from vlmfo1.modeling.roi_align import roi_align, roi_align_backend, roi_align_torch


def proposals(count: int, image_w: float, image_h: float, generator: torch.Generator) -> torch.Tensor:
    low, high = torch.tensor(16.0).log(), torch.tensor(0.6 * min(image_w, image_h)).log()
    sides = (low + (high - low) * torch.rand(count, 2, generator=generator)).exp()
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor([image_w, image_h]) - sides)
    return torch.cat([torch.zeros(count, 1), corner, corner + sides], dim=1)


def timed(function, repeats: int, device: str) -> float:
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def measure(name: str, channels: int, height: int, width: int, scale: float, args, generator) -> str:
    features = torch.randn(1, channels, height, width, generator=generator).to(args.device)
    rois = proposals(args.boxes, width / scale, height / scale, generator).to(args.device)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        forward_ms = timed(lambda: roi_align_torch(features, rois, 7, scale), args.repeats, args.device)
        last_ms = timed(lambda: roi_align_torch(channels_last, rois, 7, scale), args.repeats, args.device)
        torchvision_ms = (
            timed(lambda: roi_align(features, rois, 7, scale), args.repeats, args.device)
            if roi_align_backend() == "torchvision"
            else None
        )
    features.requires_grad_(True)

    def forward_backward():
        roi_align_torch(features, rois, 7, scale).sum().backward()
        features.grad = None

    backward_ms = timed(forward_backward, args.repeats, args.device)
    line = (
        f"{name}, {args.boxes} boxes: pure-torch forward {forward_ms:.0f} ms "
        f"(channels_last input: {last_ms:.0f} ms), forward+backward {backward_ms:.0f} ms"
    )
    if torchvision_ms is not None:
        line += f"; torchvision forward {torchvision_ms:.0f} ms"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"roi_align backend: {roi_align_backend()}; torch threads: {torch.get_num_threads()}; device: {args.device}")
    print(measure("aux 3840x192x192 @1/4", 3840, 192, 192, 0.25, args, generator))
    print(measure("simplefp 512x54x72 @1/14", 512, 54, 72, 1 / 14, args, generator))


if __name__ == "__main__":
    main()
