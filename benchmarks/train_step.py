"""Training-step throughput: FO1 vs. a plain Qwen2.5-VL SFT step on the same tokens and batch.

Both variants see the same batch of ShapeWorld records (input ids, labels, images): FO1 with its
region tokens (auxiliary DaViT + HFRE + connector), the plain model with the region placeholders as
ordinary text tokens. Both run the stage-2 setting (primary ViT frozen, LLM trained; FO1 also trains
the DaViT, region encoder and connector) with AdamW. Each variant runs in its own process so its
peak memory is its own (CUDA: max_memory_allocated; CPU: peak resident set size of the process).

    python benchmarks/train_step.py --size demo --batch-size 8 --steps 5
    python benchmarks/train_step.py --size small --device cuda --batch-size 16

Prints tokens/s (non-padding tokens per second of forward + backward + optimizer step) for each,
the FO1/plain step-time ratio (target <= 1.2) and peak memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_batch(size: str, batch_size: int, image_size: int, aux_image_size: int, max_pixels: int, seed: int):
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.training.collator import FO1Collator
    from vlmfo1.training.data import FO1TrainingDataset, load_source
    from vlmfo1.training.tiny import init_tiny, shapeworld_corpus, train_small_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="fo1-bench-"))
    config = ShapeWorldConfig.train(image_size=(image_size, image_size),
                                    task_counts={"detection": 1, "counting": 1, "detect_everything": 1})
    write_dataset(folder, n=batch_size, seed=seed, split="bench", config=config, coordinates=False)
    tokenizer = train_small_tokenizer(shapeworld_corpus(50), vocab_size=1024)
    model, processor = init_tiny(None, size=size, tokenizer=tokenizer, max_pixels=max_pixels,
                                 aux_image_size=aux_image_size, seed=seed)
    dataset = FO1TrainingDataset([load_source(folder / "bench.fo1.jsonl")], processor)
    batch = FO1Collator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(batch_size)])
    return model, batch


def run_variant(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, batch = build_batch(args.size, args.batch_size, args.image_size, args.aux_image_size, args.max_pixels, args.seed)
    if args.variant == "plain":
        model = model.vlm  # the base Qwen2.5-VL, with the same weights
        batch = {k: v for k, v in batch.items() if k not in ("aux_pixel_values", "region_boxes")}
        batch["mm_token_type_ids"] = (batch["input_ids"] == model.config.image_token_id).int()
        model.requires_grad_(True)
        model.model.visual.requires_grad_(False)
    else:
        from vlmfo1.training.stages import apply_stage

        apply_stage(model, 2)
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
    median = sorted(times)[len(times) // 2]
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "variant": args.variant, "step_seconds_median": median, "step_seconds": times, "tokens_per_step": tokens,
        "tokens_per_second": tokens / median, "peak_memory_mib": peak / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "regions_per_sample": batch.get("region_boxes", torch.zeros(0, 0)).shape[1] if args.variant == "fo1" else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="demo", help="vlmfo1.modeling.factory size (tiny, small, demo, mid)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--aux-image-size", type=int, default=192)
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=["fo1", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("plain", "fo1"):
        command = [sys.executable, __file__, "--variant", variant] + [
            a for a in sys.argv[1:] if a != "--variant"]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    plain, fo1 = results["plain"], results["fo1"]
    print(f"size={args.size} batch={args.batch_size} device={args.device} bf16={args.bf16} "
          f"tokens/step={fo1['tokens_per_step']} regions/sample<= {fo1['regions_per_sample']}")
    for name, r in (("plain Qwen2.5-VL", plain), ("FO1", fo1)):
        print(f"{name:18s} step {r['step_seconds_median']:.3f} s  {r['tokens_per_second']:8.1f} tokens/s  "
              f"peak memory {r['peak_memory_mib']:.0f} MiB  params {r['parameters']:,}")
    ratio = fo1["step_seconds_median"] / plain["step_seconds_median"]
    print(f"FO1 / plain step time: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
