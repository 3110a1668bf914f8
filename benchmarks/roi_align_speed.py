"""Time vlmfo1's RoIAlign on FO1-sized maps; prints milliseconds per call.

    python benchmarks/roi_align_speed.py [--device cuda] [--boxes 100] [--repeats 3] [--threads N]

1. `roi_align` (all 7x7 bins, the torchvision drop-in), pure-PyTorch path, on the DaViT-large aux
   map of a 768x768 image (3840 x 192 x 192, scale 1/4) and one SimpleFP level of a ~1000x750
   primary image (512 x 54 x 72, scale 1/14).
2. The HFRE's pooling (each box's mean over its bins) as the region encoder used to compute it and
   as it does now with `roi_align_mean`, forward and forward + backward:
   - aux: the 4 DaViT-large stage maps (256x192^2, 512x96^2, 1024x48^2, 2048x24^2); before:
     upsample to 192^2 + concatenate (channels_last) + `roi_align` + mean; now: `roi_align_mean`
     on the stage maps (no upsampled map);
   - primary: the 4 SimpleFP levels (512 channels at scales 1/3.5, 1/7, 1/14, 1/28); before:
     `roi_align` + mean per level; now: `roi_align_mean` per level.
Boxes are 100 proposals with log-uniform sides from 16 px to 60% of the image.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vlmfo1.modeling.roi_align import roi_align, roi_align_backend, roi_align_mean, roi_align_torch


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
    print("HFRE pooling (mean over the 7x7 bins of each box):")
    for line in measure_hfre(args, generator):
        print(line)


def measure_hfre(args, generator) -> list[str]:
    def maps(shapes):
        return [
            torch.randn(1, *shape, generator=generator).to(args.device).contiguous(memory_format=torch.channels_last)
            for shape in shapes
        ]

    stages = maps([(256, 192, 192), (512, 96, 96), (1024, 48, 48), (2048, 24, 24)])
    aux_rois = proposals(args.boxes, 768.0, 768.0, generator).to(args.device)

    def aux_before(stage_maps):
        size = stage_maps[0].shape[-2:]
        upsampled = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in stage_maps[1:]]
        fused = torch.cat([stage_maps[0], *upsampled], dim=1).contiguous(memory_format=torch.channels_last)
        return roi_align_torch(fused, aux_rois, 7, 0.25).mean(dim=(2, 3))

    def aux_now(stage_maps):
        return roi_align_mean(stage_maps, aux_rois, 7, 0.25)

    levels = maps([(512, 216, 288), (512, 108, 144), (512, 54, 72), (512, 27, 36)])
    scales = (1 / 3.5, 1 / 7, 1 / 14, 1 / 28)
    primary_rois = proposals(args.boxes, 1008.0, 756.0, generator).to(args.device)

    def primary_before(level_maps):
        return torch.cat(
            [roi_align_torch(m, primary_rois, 7, s).mean(dim=(2, 3)) for m, s in zip(level_maps, scales)], dim=1
        )

    def primary_now(level_maps):
        return torch.cat([roi_align_mean(m, primary_rois, 7, s) for m, s in zip(level_maps, scales)], dim=1)

    lines = []
    for name, inputs, before, now in (
        ("aux, 4 DaViT-large stage maps of a 768 px image", stages, aux_before, aux_now),
        ("primary, 4 SimpleFP levels of a 1008x756 image", levels, primary_before, primary_now),
    ):
        with torch.no_grad():
            difference = (before(inputs) - now(inputs)).abs().max().item()
            forward = [timed(lambda f=f, x=inputs: f(x), args.repeats, args.device) for f in (before, now)]
        for m in inputs:
            m.requires_grad_(True)

        def forward_backward(function, maps):
            function(maps).sum().backward()
            for m in maps:
                m.grad = None

        both = [timed(lambda f=f, x=inputs: forward_backward(f, x), args.repeats, args.device) for f in (before, now)]
        for m in inputs:
            m.requires_grad_(False)
        lines.append(
            f"  {name}, {args.boxes} boxes: forward {forward[0]:.0f} -> {forward[1]:.0f} ms, forward+backward "
            f"{both[0]:.0f} -> {both[1]:.0f} ms (max |difference| {difference:.1e})"
        )
    return lines


if __name__ == "__main__":
    main()
