"""Training-step throughput: FO1 vs. a plain Qwen2.5-VL SFT step on the same tokens and batch.

All variants see the same batch of ShapeWorld records (input ids, labels, images):

- ``plain``: the base Qwen2.5-VL with the FO1 model's weights, region placeholders as ordinary text
  tokens; primary ViT frozen, LLM trained (a plain SFT step);
- ``fo1``: FO1 in stage 2 (DaViT, region encoder, connector and LLM trained; ViT frozen);
- ``fo1-no-aux``: the same with a model built without the auxiliary branch (``use_aux_features=False``:
  no DaViT, region tokens from the primary ViT + SimpleFP only). ``fo1`` minus this is what the
  auxiliary encoder costs; this minus ``plain`` is the rest of region encoding;
- ``fo1-stage1``: FO1 in stage 1 (region encoder, connector and the FO1 token rows trained; ViT,
  DaViT and LLM frozen, so the encoders run without building autograd graphs).

Each variant runs in its own process (its peak memory is its own: CUDA max_memory_allocated, CPU
peak resident set size) with AdamW. ``--repeats`` runs the whole set several times, interleaved;
reported are medians: per variant the median step time over all timed steps of all repeats, and
the median over repeats of the FO1/plain ratio measured within the same repeat. The load average
is printed before and after, since a shared CPU skews timings.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py --size demo --threads 1 --repeats 3
    python benchmarks/train_step.py --size small --device cuda --batch-size 16

Prints tokens/s (non-padding tokens per second of forward + backward + optimizer step) per variant,
the step-time ratio to the plain step (target for ``fo1``: <= 1.2) and the auxiliary encoder's
share of the overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("plain", "fo1", "fo1-no-aux", "fo1-stage1")


def build_batch(size: str, batch_size: int, image_size: int, aux_image_size: int, max_pixels: int, seed: int,
                **config_overrides):
    """(model, batch, first FO1 token id) for `batch_size` ShapeWorld records."""
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.training.collator import FO1Collator
    from vlmfo1.training.data import FO1TrainingDataset, load_source
    from vlmfo1.training.tiny import first_fo1_token_id, init_tiny, shapeworld_corpus, train_small_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="fo1-bench-"))
    config = ShapeWorldConfig.train(image_size=(image_size, image_size),
                                    task_counts={"detection": 1, "counting": 1, "detect_everything": 1})
    write_dataset(folder, n=batch_size, seed=seed, split="bench", config=config, coordinates=False)
    tokenizer = train_small_tokenizer(shapeworld_corpus(50), vocab_size=1024)
    model, processor = init_tiny(None, size=size, tokenizer=tokenizer, max_pixels=max_pixels,
                                 aux_image_size=aux_image_size, seed=seed, **config_overrides)
    dataset = FO1TrainingDataset([load_source(folder / "bench.fo1.jsonl")], processor)
    batch = FO1Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(batch_size)])
    return model, batch, first_fo1_token_id(processor.tokenizer)


def run_variant(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    overrides = {"use_aux_features": False} if args.variant == "fo1-no-aux" else {}
    model, batch, first_new_token_id = build_batch(args.size, args.batch_size, args.image_size, args.aux_image_size,
                                                   args.max_pixels, args.seed, **overrides)
    if args.variant == "plain":
        model = model.vlm  # the base Qwen2.5-VL, with the same weights
        batch = {k: v for k, v in batch.items() if k not in ("aux_pixel_values", "region_boxes")}
        batch["mm_token_type_ids"] = (batch["input_ids"] == model.config.image_token_id).int()
        model.requires_grad_(True)
        model.model.visual.requires_grad_(False)
    else:
        from vlmfo1.training.stages import apply_stage

        apply_stage(model, 1 if args.variant == "fo1-stage1" else 2, first_new_token_id=first_new_token_id)
    model.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tokens = int(batch["attention_mask"].sum())
    median = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "variant": args.variant, "step_seconds_median": median, "step_seconds": times, "tokens_per_step": tokens,
        "tokens_per_second": tokens / median, "peak_memory_mib": peak / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "regions_per_sample": batch["region_boxes"].shape[1] if "region_boxes" in batch else 0,
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="demo", help="vlmfo1.modeling.factory size (tiny, small, demo, mid)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole variant set, interleaved")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--aux-image-size", type=int, default=192)
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "plain" not in variants:
        parser.error(f"--variants must include plain and name only {VARIANTS}; got {args.variants!r}")

    forwarded = []  # the command line minus the options only this parent process uses
    skip = False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a in ("--repeats", "--variants"):
            skip = True
            continue
        if not a.startswith(("--repeats=", "--variants=")):
            forwarded.append(a)
    print(f"load average before: {load_average()}", flush=True)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            command = [sys.executable, __file__, "--variant", variant] + forwarded
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(output.strip().splitlines()[-1]))
    print(f"load average after:  {load_average()}")

    first = runs[variants[-1]][0]
    print(f"size={args.size} batch={args.batch_size} device={args.device} bf16={args.bf16} threads={args.threads} "
          f"repeats={args.repeats} x {args.steps} steps; tokens/step={first['tokens_per_step']} "
          f"regions/sample<= {runs['fo1'][0]['regions_per_sample'] if 'fo1' in runs else '?'}")
    median_step = {v: statistics.median([t for r in rs for t in r["step_seconds"]]) for v, rs in runs.items()}
    for variant, rs in runs.items():
        ratios = [r["step_seconds_median"] / p["step_seconds_median"] for r, p in zip(rs, runs["plain"])]
        ratio = statistics.median(ratios)
        per_repeat = ", ".join(f"{x:.2f}" for x in ratios)
        target = "  (target <= 1.2x)" if variant == "fo1" else ""
        print(f"{variant:11s} step {median_step[variant]:.3f} s  {rs[0]['tokens_per_step'] / median_step[variant]:8.1f} "
              f"tokens/s  x{ratio:.2f} of plain [{per_repeat}]{target}  peak memory "
              f"{statistics.median(r['peak_memory_mib'] for r in rs):.0f} MiB  params {rs[0]['parameters']:,} "
              f"(trained {rs[0]['trainable_parameters']:,})")
    if {"fo1", "fo1-no-aux"} <= set(runs):
        plain, fo1, no_aux = median_step["plain"], median_step["fo1"], median_step["fo1-no-aux"]
        print(f"FO1 overhead over plain: {fo1 - plain:.3f} s/step; auxiliary branch (DaViT fwd+bwd + its pooling) "
              f"{fo1 - no_aux:.3f} s = {(fo1 - no_aux) / plain:.2f}x of plain; rest of region encoding "
              f"(SimpleFP, pooling, connector, plumbing) {no_aux - plain:.3f} s = {(no_aux - plain) / plain:.2f}x of plain")


if __name__ == "__main__":
    main()
