"""Does the demo LLM learn retrieval over region slots? Look-up in FO1's exact layout, words in the slots.

FO1 answers a detection question by finding the region token whose content fits the label and
naming the index token before it: `<region0>[R]<region1>[R]...` -> `<region1>`. Whether a small
LLM can learn that circuit is a question apart from the vision side, so here every slot `[R]`
holds the sum of its item's word embeddings ("red circle" -> E(" red") + E(" circle")) instead of a
region feature, and only the LLM trains. The records are the slot-keyed look-up of
`vlmfo1.data.shapeworld.text_tasks` (keys="slots", the items as each record's `region_text`), run
through the trainer's own encoding and collation:

    <region0>[R = red circle]<region1>[R = blue star]
    Please detect blue star in this image. Answer the question with object indexes.
    -> <ground>blue star</ground><objects><region1></objects>

It reports the teacher-forced top-1 of the answers' region tokens on held-out lists, next to a
uniform guess, every `--every` steps. An experiment, not part of the recipe (docs/training.md).

    python benchmarks/slot_lookup.py --init-from MODEL --out runs/slots2 --items 2 --steps 1500 --lr 2e-3
    python benchmarks/slot_lookup.py --init-from runs/slots2 --out runs/slots4 --items 4 --steps 800
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vlmfo1.training.text_checks import teacher_forced_accuracy

BUNDLED = Path(__file__).resolve().parents[1] / "vlmfo1" / "assets" / "shapeworld-fo1"


class SlotBatches:
    """Batches of slot look-up records (keys="slots") through the trainer's own path: `encode_record`
    puts the region slots before the question and `FO1Collator` pads; the model fills each slot with
    its `region_text` words' embedding sum."""

    def __init__(self, processor):
        from vlmfo1.training.collator import FO1Collator

        self.processor = processor
        self.collate = FO1Collator(processor.tokenizer.pad_token_id)

    def __call__(self, records) -> dict[str, torch.Tensor]:
        from vlmfo1.training.data import encode_record

        return self.collate([encode_record(r, None, self.processor) for r in records])


def region_top1(model, processor, records) -> dict[str, float]:
    check = teacher_forced_accuracy(model, processor, records)
    return {"top1": check["region"], "chance": check["region_chance"], "tokens": check["region_tokens"]}


def train_llm(model, batches: SlotBatches, records, steps: int, lr: float, args, held_out=None) -> list[dict]:
    """AdamW on the LLM alone (embeddings included), warmup then cosine (or constant with
    `--constant-lr`); the held-out region top-1 every `args.every` steps when `held_out` is given."""
    model.requires_grad_(False)
    model.language_model.requires_grad_(True)  # the embeddings too (tied LM head)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / args.warmup) * (
            1.0 if args.constant_lr else 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))))
    model.train()
    curve = []
    for step in range(steps):
        loss = model(**batches(records[step * args.batch:(step + 1) * args.batch])).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if held_out is not None and (step + 1) % args.every == 0:
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), **region_top1(model, batches.processor, held_out)})
            print(curve[-1], flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--init-from", default=None, help="a model folder (default: a random demo-size FO1)")
    parser.add_argument("--items", type=int, default=4, help="most items per list (at least 2)")
    parser.add_argument("--queries", type=int, default=1, help="most labels per question")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=100, help="held-out check every N steps (64 questions)")
    parser.add_argument("--eval-records", type=int, default=160)
    parser.add_argument("--describe-share", type=float, default=0.0,
                        help="share of training questions that ask the reverse way (What shape is <regionK>?)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and training-list seed")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--repeat-steps", type=int, default=0,
                        help="first train this many steps on repeat_records (copying words and region tokens)")
    parser.add_argument("--repeat-vocabulary", default="shapeworld", choices=["shapeworld", "random"],
                        help="words of the repeat questions (text_tasks.repeat_records)")
    parser.add_argument("--constant-lr", action="store_true", help="no cosine decay after the warmup")
    parser.add_argument("--region-row-scale", type=float, default=1.0,
                        help="multiply the <regionK> embedding rows by this before training")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
    from vlmfo1.data.shapeworld.text_tasks import lookup_records, repeat_records
    from vlmfo1.training.text_checks import region_token_ids
    from vlmfo1.training.tiny import init_tiny, save_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.init_from:
        model = FO1ForConditionalGeneration.from_pretrained(args.init_from)
        processor = FO1Processor.from_pretrained(args.init_from)
    else:
        model, processor = init_tiny(None, size="demo", tokenizer=str(BUNDLED), aux_image_size=192, max_pixels=224 * 224)
    shape = dict(max_items=args.items, max_queries=args.queries, keys="slots")
    train = lookup_records(args.steps * args.batch, seed=11 + 1000 * args.seed, describe_share=args.describe_share, **shape)
    held_out = lookup_records(args.eval_records, seed=12, split="val", **shape)
    batches = SlotBatches(processor)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "before": region_top1(model, processor, held_out)}
    print("before", report["before"], flush=True)

    if args.region_row_scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight[region_token_ids(processor.tokenizer)] *= args.region_row_scale
    if args.repeat_steps:
        repeats = repeat_records(args.repeat_steps * args.batch, seed=21 + 1000 * args.seed,
                                 vocabulary=args.repeat_vocabulary)
        repeat_held_out = repeat_records(args.eval_records, seed=22, split="val")
        start = time.perf_counter()
        train_llm(model, batches, repeats, args.repeat_steps, args.lr, args)
        report["repeat"] = {"seconds": round(time.perf_counter() - start, 1),
                            "copy": teacher_forced_accuracy(model, processor, repeat_held_out)}
        print("repeat", report["repeat"], flush=True)

    start = time.perf_counter()
    report["curve"] = train_llm(model, batches, train, args.steps, args.lr, args, held_out=held_out[:64])
    report["train_seconds"] = round(time.perf_counter() - start, 1)
    report["after"] = region_top1(model, processor, held_out)
    save_model(model, processor, args.out)
    (args.out / "slot_lookup.json").write_text(json.dumps(report, indent=2) + "\n")
    print("after", report["after"], f"{report['train_seconds']} s")


if __name__ == "__main__":
    main()
