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

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py --size demo --threads 1 --repeats 3 --breakdown
    python benchmarks/train_step.py --size small --device cuda --batch-size 16
    python benchmarks/train_step.py --flops

Prints tokens/s (non-padding tokens per second of forward + backward + optimizer step) per variant,
the step-time ratio to the plain step (target for ``fo1``: <= 1.2) and the auxiliary encoder's
share of the overhead; with ``--breakdown`` also the DaViT, SimpleFP and the rest of the region
encoder timed alone. ``--flops`` instead counts the FLOPs of one sample's step at the released
model's size (Qwen2.5-VL-3B + DaViT-large), where this machine cannot time it.
"""
from __future__ import annotations

import argparse
import json
import math
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
    wall, cpu = timed(step, args.steps)
    tokens = int(batch["attention_mask"].sum())
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {
        "variant": args.variant, "wall": wall, "cpu": cpu, "tokens_per_step": tokens, "peak_memory_mib": peak / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "regions_per_sample": batch["region_boxes"].shape[1] if "region_boxes" in batch else 0,
    }
    if args.variant == "fo1" and args.breakdown:
        with autocast:
            result["components"] = component_times(model, batch, args.steps, device)
    return result


def timed(function, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of each of `repeats` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def component_times(model, batch, repeats: int, device) -> dict[str, dict[str, list[float]]]:
    """Forward + backward of FO1's added parts alone, on the benchmark batch (stage-2 setting).

    `davit`: the auxiliary encoder; `simple_fp`: SimpleFP on the last full-attention ViT maps;
    `region_encoder`: the whole region encoder (SimpleFP, pooling of the DaViT and SimpleFP maps,
    fusion, connector) on fixed DaViT maps, so `region_encoder - simple_fp` is pooling + fusion +
    connector. Backward starts from a fixed random gradient of each part's output.
    """
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    counts = (batch["input_ids"] == model.config.region_token_id).sum(-1).tolist()
    boxes = torch.cat([b[:n] for b, n in zip(batch["region_boxes"], counts)])
    image_index = torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))
    with torch.no_grad():
        _, levels = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])
        stages = [s.detach().requires_grad_() for s in model.aux_stage_maps(batch["aux_pixel_values"])]
    generator = torch.Generator().manual_seed(0)

    def backward_from(outputs):
        torch.autograd.backward(outputs, [torch.randn(o.shape, generator=generator).to(o) for o in outputs])
        sync()

    def davit():
        backward_from(model.aux_stage_maps(batch["aux_pixel_values"]))

    last_level = torch.stack([image_levels[-1] for image_levels in levels])

    def simple_fp():
        backward_from(model.region_encoder.simple_fp(last_level))

    def region_encoder():
        backward_from([model.region_encoder(boxes, levels, stages, model.config.aux_image_size, image_index)])

    parts = {"davit": davit, "simple_fp": simple_fp, "region_encoder": region_encoder}
    results = {}
    for name, function in parts.items():
        function()  # warm-up
        wall, cpu = timed(function, repeats)
        results[name] = {"wall": wall, "cpu": cpu}
    model.zero_grad(set_to_none=True)
    return results


def flop_counts(image_w: int, image_h: int, regions: int, text_tokens: int, aux_size: int) -> None:
    """Prints the FLOPs of one sample's training step at the released model's size (Qwen2.5-VL-3B,
    DaViT-large, SimpleFP 1280 -> 512), counted by `torch.utils.flop_counter` with eager attention.

    Nothing is trained or timed: the LLM, DaViT and SimpleFP run on the meta device (shapes only);
    the primary ViT needs real grid arithmetic, so one window block, one full-attention block and
    the rest are counted on small CPU runs and scaled to the 28 + 4 blocks. FLOPs are not time
    (convolutions and small-window attention run less efficiently than the LLM's large GEMMs),
    and the optimizer's elementwise work is not counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Florence2VisionBackbone, Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLTextModel,
    )

    from vlmfo1.modeling.configuration_fo1 import florence2_large_davit_config
    from vlmfo1.modeling.region_encoder import SimpleFP, build_connector

    def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                            _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
        # torch's own formula ignores `groups`, which overcounts the DaViT's depthwise convolutions
        # by their channel count. Each of grad input / grad weight costs what the forward costs:
        # 2 x (elements on the weight's output side) x (weight elements per output channel).
        per_direction = 2 * math.prod(x_shape if transposed else grad_out_shape) * math.prod(w_shape[1:])
        return per_direction * (int(output_mask[0]) + int(output_mask[1]))

    def counted(function) -> float:
        counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
        with counter:
            function()
        return counter.get_total_flops() / 1e12

    vision = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
              "window_size": 112, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    grid_h, grid_w = image_h // 28 * 2, image_w // 28 * 2
    image_tokens = grid_h * grid_w // 4
    tokens = image_tokens + 2 * regions + text_tokens  # each region: <regionK> and its feature slot

    def vit_forward(depth: int, full_attention: list[int]) -> float:
        config = Qwen2_5_VLConfig(vision_config=dict(vision, depth=depth, fullatt_block_indexes=full_attention))
        torch.manual_seed(0)
        vit = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config, attn_implementation="eager")
        pixels = torch.randn(grid_h * grid_w, 3 * 2 * 14 * 14)
        with torch.no_grad():
            return counted(lambda: vit(pixels, grid_thw=torch.tensor([[1, grid_h, grid_w]])))

    one_window, two_windows, one_full = vit_forward(1, []), vit_forward(2, []), vit_forward(1, [0])
    window_block = two_windows - one_window
    vit = (one_window - window_block) + 28 * window_block + 4 * (one_full - (one_window - window_block))

    text = Qwen2_5_VLConfig(text_config={
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}).text_config
    with torch.device("meta"):
        language_model = Qwen2_5_VLTextModel._from_config(text, attn_implementation="eager")
        lm_head = torch.nn.Linear(2048, text.vocab_size, bias=False)
        davit = Florence2VisionBackbone._from_config(florence2_large_davit_config(), attn_implementation="eager")
        simple_fp = SimpleFP(1280, 512)
        connector = build_connector("mlp2x_gelu", 3840 + 4 * 512, 2048)
    positions = torch.arange(tokens, device="meta")[None, None].expand(3, 1, tokens)

    def llm(train_weights: bool) -> float:
        language_model.requires_grad_(train_weights)
        lm_head.requires_grad_(train_weights)
        embeddings = torch.randn(1, tokens, 2048, device="meta", requires_grad=True)
        hidden = language_model(inputs_embeds=embeddings, position_ids=positions).last_hidden_state
        lm_head(hidden).sum().backward()

    aux_pixels = torch.randn(1, 3, aux_size, aux_size, device="meta")

    def davit_forward():
        with torch.no_grad():
            davit(aux_pixels, output_hidden_states=True)

    stage_ends = torch.tensor(davit.config.depths).cumsum(0).tolist()

    def davit_train():
        out = davit(aux_pixels, output_hidden_states=True)
        stages = [out.hidden_states[end] for end in stage_ends]
        torch.autograd.backward(stages, [torch.ones_like(stage) for stage in stages])

    def region_encoder_train():
        levels = simple_fp(torch.randn(1, 1280, grid_h, grid_w, device="meta"))
        pooled = torch.cat([level.mean(dim=(2, 3)).expand(regions, -1) for level in levels], dim=1)
        features = torch.cat([torch.randn(regions, 3840, device="meta"), pooled], dim=1)
        connector(features).sum().backward()

    parts = {
        "primary ViT forward (frozen)": vit,
        "LLM forward+backward, weights trained": counted(lambda: llm(True)),
        "LLM forward+backward, weights frozen (stage 1)": counted(lambda: llm(False)),
        "DaViT-large forward": counted(davit_forward),
        "DaViT-large forward+backward": counted(davit_train),
        "SimpleFP + connector forward+backward": counted(region_encoder_train),
    }
    print(f"FLOPs of one sample's training step at Qwen2.5-VL-3B + DaViT-large size: {image_w}x{image_h} image "
          f"({image_tokens} image tokens), {regions} regions, {tokens} LLM tokens, DaViT input {aux_size}^2 "
          "(torch.utils.flop_counter, eager attention; RoIAlign pooling and the optimizer not counted)")
    for name, tflop in parts.items():
        print(f"  {name:48s} {tflop:7.2f} TFLOP")
    plain = vit + parts["LLM forward+backward, weights trained"]
    region = parts["SimpleFP + connector forward+backward"]
    steps = {
        "plain Qwen2.5-VL SFT step": plain,
        "FO1 stage 2": plain + parts["DaViT-large forward+backward"] + region,
        "FO1 stage 2 without the aux branch": plain + region,
        "FO1 stage 1": vit + parts["LLM forward+backward, weights frozen (stage 1)"] + parts["DaViT-large forward"] + region,
    }
    for name, tflop in steps.items():
        print(f"  {name:48s} {tflop:7.2f} TFLOP  x{tflop / plain:.2f} of plain")


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
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the DaViT, SimpleFP and the rest of the region encoder alone (fwd+bwd)")
    parser.add_argument("--flops", action="store_true",
                        help="instead of timing, count the FLOPs of a training step at the released model's size")
    parser.add_argument("--flops-image", default="1008x756", help="--flops: primary image size WxH")
    parser.add_argument("--flops-regions", type=int, default=100, help="--flops: regions per sample")
    parser.add_argument("--flops-text-tokens", type=int, default=100, help="--flops: text tokens per sample")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flops:
        width, height = (int(v) for v in args.flops_image.lower().split("x"))
        flop_counts(width, height, args.flops_regions, args.flops_text_tokens, 768)
        return
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
            child = subprocess.run(command, check=False, capture_output=True, text=True)
            if child.returncode != 0:
                sys.exit(f"variant {variant} failed:\n{child.stderr}")
            runs[variant].append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"load average after:  {load_average()}")
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    """Per variant: median step (wall and CPU), tokens/s, and the ratio to plain within each repeat."""
    first = next(iter(runs.values()))[0]
    regions = runs["fo1"][0]["regions_per_sample"] if "fo1" in runs else "?"
    print(f"size={args.size} batch={args.batch_size} device={args.device} bf16={args.bf16} threads={args.threads} "
          f"repeats={args.repeats} x {args.steps} steps; tokens/step={first['tokens_per_step']} regions/sample<= {regions}")
    clocks = ("wall", "cpu") if args.device == "cpu" else ("wall",)
    ratios = {clock: {} for clock in clocks}
    for variant, rs in runs.items():
        line = f"{variant:11s}"
        for clock in clocks:
            step = statistics.median([t for r in rs for t in r[clock]])
            per_repeat = [statistics.median(r[clock]) / statistics.median(p[clock]) for r, p in zip(rs, runs["plain"])]
            ratios[clock][variant] = per_repeat
            line += (f" | {clock} {step:.3f} s/step {rs[0]['tokens_per_step'] / step:7.1f} tok/s "
                     f"x{statistics.median(per_repeat):.2f} [{', '.join(f'{x:.2f}' for x in per_repeat)}]")
        line += (f" | peak {statistics.median(r['peak_memory_mib'] for r in rs):.0f} MiB, params "
                 f"{rs[0]['parameters'] / 1e6:.1f}M ({rs[0]['trainable_parameters'] / 1e6:.1f}M trained)")
        print(line)
    print("xR = step time / plain step time, median over repeats [per repeat]; target for fo1: <= 1.2")
    for clock in clocks:
        fastest = {v: min(t for r in rs for t in r[clock]) for v, rs in runs.items()}
        print(f"{clock}, fastest step of each variant (least disturbed by other jobs): "
              + ", ".join(f"{v} x{fastest[v] / fastest['plain']:.2f}" for v in runs if v != "plain"))
    if args.device == "cpu":
        print("cpu = the process's own CPU seconds (with --threads 1 the same as wall time on an idle machine, "
              "and much less disturbed by other jobs on a shared one)")
    if {"fo1", "fo1-no-aux"} <= set(runs):
        for clock in clocks:
            fo1, no_aux = ratios[clock]["fo1"], ratios[clock]["fo1-no-aux"]
            aux = statistics.median(f - n for f, n in zip(fo1, no_aux))
            rest = statistics.median(n - 1 for n in no_aux)
            print(f"{clock}: FO1 overhead = auxiliary branch (DaViT fwd+bwd and its pooling) {aux:+.2f}x of plain "
                  f"+ rest of region encoding (SimpleFP, primary pooling, connector, plumbing) {rest:+.2f}x of plain")
    components = [r["components"] for r in runs.get("fo1", []) if "components" in r]
    if components:
        plain_step = {clock: statistics.median([t for r in runs["plain"] for t in r[clock]]) for clock in clocks}
        for clock in clocks:
            median = {name: statistics.median([t for c in components for t in c[name][clock]]) for name in components[0]}
            pooling = median["region_encoder"] - median["simple_fp"]
            print(f"{clock}: FO1 parts alone (fwd+bwd, s; x of plain step): DaViT {median['davit']:.3f} "
                  f"({median['davit'] / plain_step[clock]:.2f}x), SimpleFP {median['simple_fp']:.3f} "
                  f"({median['simple_fp'] / plain_step[clock]:.2f}x), pooling + fusion + connector {pooling:.3f} "
                  f"({pooling / plain_step[clock]:.2f}x)")

if __name__ == "__main__":
    main()
