"""Does a small FO1 learn grounding? Train one on chosen ShapeWorld tasks, then measure what it learned.

The bundled demo model writes the FO1 grammar but does not ground (docs/training.md). This probe
separates the two skills grounding needs, on held-out scenes, by the model's loss on each kind of
answer token (teacher forcing, so one wrong token does not spoil the rest):

* ``word``: label words the answer copies from the question (``<ground>red circle</ground>``);
* ``region``: the ``<regionK>`` tokens (retrieval), with top-1 accuracy; chance is about 1/#regions;
* ``grammar``: the other special tokens (``<ground>``, ``<objects>``, ...).

    python benchmarks/grounding_probe.py --out runs/probe --tasks detection:3 --steps 300 --lr 3e-3
    python benchmarks/grounding_probe.py --out runs/probe-text --text-lookup 40000 --train llm --steps 600 --batch 16

Region tokens also get two checks of what they carry: their mean pairwise cosine and norm next to
the word embeddings' (tokens that all point one way carry nothing to retrieve by), and whether an
object's colour and shape can be read from its token by a linear classifier (`decodable`, fitted on
70 % of the held-out objects, scored on the rest, next to the majority-class rate).

``--text-lookup N`` trains on N text-only look-up records (`vlmfo1.data.shapeworld.text_tasks`)
instead of scenes and reports their exact-match accuracy. ``--evaluate MODEL`` only measures an
existing model folder (the bundled one, a probe run, a recipe stage).

Held-out scenes: 200 new scenes of the train preset (seed 1), one detection question each.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

from vlmfo1.data.records import read_records, write_records
from vlmfo1.training.recipes import take_tasks
from vlmfo1.training.trainer import train

BUNDLED = Path(__file__).resolve().parents[1] / "vlmfo1" / "assets" / "shapeworld-fo1"


def load(model_dir: Path):
    from vlmfo1 import FO1ForConditionalGeneration, FO1Processor

    return FO1ForConditionalGeneration.from_pretrained(str(model_dir)).eval(), FO1Processor.from_pretrained(model_dir)


def token_losses(model, processor, records, image_root: Path) -> dict[str, float]:
    from vlmfo1.processing.image_processing import load_image

    tokenizer = processor.tokenizer
    losses: dict[str, list[float]] = collections.defaultdict(list)
    with torch.no_grad():
        for record in records:
            inputs = processor(images=[load_image(image_root / record.image)], boxes=[record.bbox_list], text=[record.prompt])
            answer = tokenizer(record.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], 1)
            extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
            # Region tokens that all point one way carry nothing to retrieve by (see docs/training.md).
            embeds = model.embed_inputs(ids, **{k: extra[k] for k in ("pixel_values", "image_grid_thw", "aux_pixel_values", "region_boxes")})
            is_region = ids[0] == model.config.region_token_id
            regions = embeds[0, is_region]
            unit = torch.nn.functional.normalize(regions, dim=-1)
            n = regions.shape[0]
            if n > 1:
                losses["region_cosine"].append(((unit @ unit.T).sum() - n).item() / (n * (n - 1)))
            losses["region_norm"].append(regions.norm(dim=-1).mean().item())
            losses["text_norm"].append(embeds[0, ~is_region & (ids[0] != model.config.vlm_config.image_token_id)].norm(dim=-1).mean().item())
            log_probs = logits[0, inputs["input_ids"].shape[1] - 1:-1].log_softmax(-1)
            for position, token in enumerate(answer):
                name = tokenizer.convert_ids_to_tokens(token)
                kind = "region" if name.startswith("<region") else ("grammar" if name.startswith("<") else "word")
                losses[kind].append(-log_probs[position, token].item())
                if kind == "region":
                    losses["region_top1"].append(float(log_probs[position].argmax().item() == token))
    return {kind: round(sum(v) / len(v), 3) for kind, v in losses.items()}


def decodable(model, processor, heldout: Path) -> dict[str, list[float]]:
    """Colour and shape of every held-out object, read from its region token (the connector output)
    and from the HFRE features before the connector by a linear classifier: [accuracy, majority]."""
    from vlmfo1.processing.image_processing import load_image

    coco = json.loads((heldout / "val.coco.json").read_text())
    objects = collections.defaultdict(list)
    for annotation in coco["annotations"]:
        objects[annotation["image_id"]].append(annotation)
    captured: dict[str, list[torch.Tensor]] = collections.defaultdict(list)

    def capture(module, inputs, output) -> None:
        captured["features"].append(inputs[0])
        captured["tokens"].append(output)

    hook = model.region_encoder.connector.register_forward_hook(capture)
    colours, shapes = [], []
    with torch.no_grad():
        for image in coco["images"]:
            found = objects[image["id"]]
            if not found:
                continue
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in found)]
            inputs = processor(images=[load_image(heldout / image["file_name"])], boxes=[boxes], text=["?"])
            model.embed_inputs(inputs["input_ids"], inputs["pixel_values"], inputs["image_grid_thw"],
                               inputs["aux_pixel_values"], inputs["region_boxes"])
            colours += [a["attributes"]["colour"] for a in found]
            shapes += [a["category_id"] for a in found]
    hook.remove()
    return {f"{name}_{kind}": linear_probe(torch.cat(captured[kind]).float(), labels)
            for kind in ("tokens", "features") for name, labels in (("colour", colours), ("shape", shapes))}


def linear_probe(x: torch.Tensor, labels: list) -> list[float]:
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])
    fit = torch.arange(len(y)) < int(0.7 * len(y))
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], len(names), requires_grad=True)
    bias = torch.zeros(len(names), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    torch.manual_seed(0)
    with torch.enable_grad():
        for _ in range(300):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x[fit] @ weight + bias, y[fit]) + 1e-3 * weight.square().sum()
            loss.backward()
            optimizer.step()
    accuracy = ((x[~fit] @ weight + bias).argmax(-1) == y[~fit]).float().mean().item()
    majority = max(collections.Counter(y[~fit].tolist()).values()) / int((~fit).sum())
    return [round(accuracy, 3), round(majority, 3)]


def chance_top1(records) -> float:
    """Region top-1 of a uniform guess among each record's regions, over the answers' region tokens."""
    guesses = [1 / len(r.bbox_list) for r in records for token in r.answer.split("<region")[1:]]
    return round(sum(guesses) / len(guesses), 3)


def heldout_split(folder: Path, scenes: int = 200) -> Path:
    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset

    if not (folder / "val.fo1.jsonl").exists():
        write_dataset(folder, n=scenes, seed=1, split="val", config=ShapeWorldConfig.train(task_counts={"detection": 1}),
                      workers=1, coordinates=False)
    return folder


def evaluate(model_dir: Path, heldout: Path) -> dict:
    model, processor = load(model_dir)
    records = [r for r in read_records(heldout / "val.fo1.jsonl") if r.task != "rejection"]
    return {"records": len(records), "region_top1_chance": chance_top1(records),
            **token_losses(model, processor, records, heldout), "decodable": decodable(model, processor, heldout)}


def lookup_accuracy(model_dir: Path, records) -> float:
    model, processor = load(model_dir)
    right = 0
    for start in range(0, len(records), 16):
        batch = records[start:start + 16]
        inputs = processor(text=[r.prompt for r in batch])
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        for record, ids in zip(batch, out[:, inputs["input_ids"].shape[1]:]):
            right += processor.tokenizer.decode(ids, skip_special_tokens=False).split("<|im_end|>")[0] == record.answer
    return right / len(records)


def pretrain(args, data: Path, out: Path) -> tuple[str, dict]:
    """Region pre-training of the start model (`--init-from` or a random demo-size FO1) into `out`."""
    from vlmfo1 import FO1ForConditionalGeneration, FO1Processor
    from vlmfo1.training.region_pretraining import pretrain_region_features
    from vlmfo1.training.tiny import init_tiny, save_model

    if args.init_from:
        model = FO1ForConditionalGeneration.from_pretrained(args.init_from)
        processor = FO1Processor.from_pretrained(args.init_from)
    else:
        model, processor = init_tiny(None, size="demo", tokenizer=str(BUNDLED), aux_image_size=192,
                                     max_pixels=224 * 224, rope_theta=args.rope_theta)
    start = time.perf_counter()
    history = pretrain_region_features(model, processor, data / "train.coco.json", data, steps=args.region_pretraining,
                                       batch_size=args.batch, learning_rate=1e-3, log=lambda line: None)
    save_model(model, processor, out)
    return str(out), {"seconds": round(time.perf_counter() - start, 1),
                      **{name: values[-5:] for name, values in history.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--scenes", type=int, default=1500, help="training scenes (ShapeWorld train preset, seed 0)")
    parser.add_argument("--tasks", default="detection:3", help="records per scene and task, e.g. detection:3,counting:2")
    parser.add_argument("--text-lookup", type=int, default=0, help="train on this many text-only look-up records instead")
    parser.add_argument("--lookup-items", type=int, default=12, help="most items in a look-up list")
    parser.add_argument("--lookup-queries", type=int, default=3, help="most labels asked in a look-up question")
    parser.add_argument("--lookup-keys", default="letters", choices=("letters", "regions"),
                        help="look-up items keyed (A) (B) ... or by region tokens in FO1's detection grammar")
    parser.add_argument("--describe-share", type=float, default=0.0,
                        help="with region keys: share of questions about one region (What shape is <region3>?)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", default="vision,image_projector,llm,aux_encoder,region_encoder,connector",
                        help="parameter groups that train (vlmfo1.training.stages.GROUPS)")
    parser.add_argument("--group-lr", default="",
                        help="learning rates of single groups, e.g. connector=1e-4,region_encoder=1e-4")
    parser.add_argument("--regions-per-sample", type=int, default=None,
                        help="keep the answer's regions + random others up to N (fewer distractors)")
    parser.add_argument("--init-from", default=None, help="a model folder to start from (default: a random demo-size FO1)")
    parser.add_argument("--rope-theta", type=float, default=1e6)
    parser.add_argument("--eval-records", type=int, default=100, help="held-out look-up questions (--text-lookup)")
    parser.add_argument("--data", type=Path, default=None, help="the training scenes' folder (default: OUT/data)")
    parser.add_argument("--heldout", type=Path, default=None, help="the held-out scenes' folder (default: OUT/heldout)")
    parser.add_argument("--heldout-scenes", type=int, default=200)
    parser.add_argument("--evaluate", type=Path, default=None, help="only measure this model folder")
    parser.add_argument("--region-pretraining", type=int, default=0, metavar="STEPS",
                        help="first pre-train the encoders on the training scenes' objects "
                             "(vlmfo1.training.region_pretraining; model in OUT/pretrained); --steps 0 stops there")
    args = parser.parse_args()

    from vlmfo1.data.shapeworld import ShapeWorldConfig, write_dataset
    from vlmfo1.data.shapeworld.text_tasks import lookup_records

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or out / "data"
    heldout = args.heldout or out / "heldout"
    if args.evaluate:
        held_out = evaluate(args.evaluate, heldout_split(heldout, args.heldout_scenes))
        report = {"model": str(args.evaluate), "held_out": held_out}
        (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return
    tasks = {name: int(n) for name, n in (t.split(":") for t in args.tasks.split(","))}
    if args.text_lookup:
        shape = dict(max_items=args.lookup_items, max_queries=args.lookup_queries, keys=args.lookup_keys,
                     describe_share=args.describe_share)
        records = lookup_records(args.text_lookup, seed=0, **shape)
        held_out = lookup_records(args.eval_records, seed=1, split="lookup-val", **shape)
    else:
        if not (data / "train.fo1.jsonl").exists():
            write_dataset(data, n=args.scenes, seed=0, split="train", config=ShapeWorldConfig.train(task_counts=tasks),
                          workers=1, coordinates=False)
        records = take_tasks(list(read_records(data / "train.fo1.jsonl")), tasks)
    write_records(out / "train.fo1.jsonl", records)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.region_pretraining:
        if args.text_lookup:
            parser.error("--region-pretraining learns from scenes, not from --text-lookup records")
        args.init_from, report["region_pretraining"] = pretrain(args, data, out / "pretrained")
        if not args.steps:
            report["held_out"] = evaluate(out / "pretrained", heldout_split(heldout, args.heldout_scenes))
            (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return
    model = ({"init_from": args.init_from} if args.init_from else
             {"tiny": {"size": "demo", "tokenizer": str(BUNDLED), "aux_image_size": 192, "max_pixels": 224 * 224,
                       "rope_theta": args.rope_theta}})
    config = {
        "stage": {"name": "probe", "train": args.train.split(","),
                  "learning_rates": {g: float(lr) for g, lr in (t.split("=") for t in args.group_lr.split(",") if t)}},
        "model": model,
        "data": {"train": [{"records": str(out / "train.fo1.jsonl"), "images": str(data)}], "shuffle_regions": True,
                 "regions_per_sample": args.regions_per_sample},
        "training": {"output_dir": str(out / "run"), "max_steps": args.steps, "learning_rate": args.lr,
                     "per_device_train_batch_size": args.batch, "warmup_steps": 0.05, "lr_scheduler_type": "cosine",
                     "weight_decay": 0.0, "logging_steps": 10, "save_steps": 10 ** 6, "report_to": "none", "seed": 0,
                     "dataloader_num_workers": 0, "disable_tqdm": True},
    }
    start = time.perf_counter()
    result = train(config, resume=None)
    seconds = time.perf_counter() - start
    losses = result.losses
    report.update({"train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / args.steps, 2),
                   "loss_first_last": [losses[0], losses[-1]] if losses else None})
    if args.text_lookup:
        report["lookup_exact"] = lookup_accuracy(out / "run", held_out)
    else:
        report["held_out"] = evaluate(out / "run", heldout_split(heldout, args.heldout_scenes))
    (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
