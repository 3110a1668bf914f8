"""How fast ShapeWorld makes data on one CPU core.

    python benchmarks/shapeworld_speed.py                  # 256 px, train and heldout presets
    python benchmarks/shapeworld_speed.py --size 512 --n 300

Stages, each timed over the same scenes (images per second, best of --repeats runs):

* scene:    lay out and draw the image, measure what is visible (`generate_scene`)
* records:  + proposals, every task sample, FO1 records and coordinate twins as JSON lines
* encoded:  + the image file's bytes (JPEG by default, see --format)
* written:  `write_dataset` with one worker into a temporary folder (files, COCO, everything)

The target is 200 images/s at 256 px on one core for the train preset ("written"). Everything
runs in this one process and thread (no worker pool). Each stage is reported twice: by the wall
clock, which drops when other programs share the machine (the load average is printed), and per
CPU second of this process, which is what one core of our own would do.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from vlmfo1.data.shapeworld import ShapeWorldConfig, encode_image, generate_example, generate_scene, write_dataset

TARGET = 200.0


def images_per_second(function, n: int, repeats: int) -> tuple[float, float]:
    """Best rate over `repeats` runs, by wall clock and by this process's CPU time. On a busy
    machine the wall rate drops with the load; the CPU-time rate is what one core of our own does."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(n / (time.perf_counter() - start_wall))
        cpu.append(n / max(1e-9, time.process_time() - start_cpu))
    return max(wall), max(cpu)


def measure(preset: str, size: int, n: int, repeats: int, image_format: str) -> dict[str, float]:
    config = ShapeWorldConfig.preset(preset, image_size=(size, size), image_format=image_format)

    def scenes():
        return [generate_scene(config, i, seed=0, split=preset) for i in range(n)]

    def records():
        for i in range(n):
            example = generate_example(config, i, seed=0, split=preset)
            [record.to_json() for record in example.fo1_records() + example.coordinate_records()]

    def encoded():
        for i in range(n):
            example = generate_example(config, i, seed=0, split=preset)
            [record.to_json() for record in example.fo1_records() + example.coordinate_records()]
            encode_image(example.scene, config.image_format)

    def written():
        with tempfile.TemporaryDirectory() as folder:
            write_dataset(folder, n, seed=0, split=preset, config=config, workers=1)

    objects = statistics.mean(len(scene.objects) for scene in scenes())
    return {
        "objects/img": objects,
        "scene": images_per_second(scenes, n, repeats),
        "records": images_per_second(records, n, repeats),
        "encoded": images_per_second(encoded, n, repeats),
        "written": images_per_second(written, n, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=200, help="images per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", default="jpg", choices=("jpg", "png"))
    parser.add_argument("--presets", default="train,heldout")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ShapeWorld speed, {args.size}x{args.size} px, {args.format}, n={args.n}, best of {args.repeats}, one process")
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.2f}")
    stages = ("scene", "records", "encoded", "written")
    print(f"{'preset':<9}{'clock':<6}{'objects/img':>12}" + "".join(f"{stage:>9}" for stage in stages) + "   (images/s)")
    for preset in args.presets.split(","):
        result = measure(preset, args.size, args.n, args.repeats, args.format)
        for k, clock in enumerate(("wall", "cpu")):
            print(f"{preset:<9}{clock:<6}{result['objects/img']:>12.1f}" + "".join(f"{result[stage][k]:>9.0f}" for stage in stages))
        if preset == "train" and args.size == 256:
            wall, cpu = result["written"]
            verdict = "meets" if cpu >= TARGET else "misses"
            print(f"  train at 256 px {verdict} the {TARGET:.0f} images/s target: {cpu:.0f} images per CPU second written ({wall:.0f}/s by the wall clock)")


if __name__ == "__main__":
    main()
