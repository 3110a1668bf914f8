"""Which detection score gives the higher mAP: the proposal's, the LLM's or their product (issue 7).

    python benchmarks/score_modes.py --model shapeworld --data DIR --split val [--limit N] [--json OUT]

DIR is a ShapeWorld folder (`vlmfo1 data shapeworld --out DIR`). Each "detect everything" record of
the split is answered once, greedily, with the record's own proposals: the answer does not depend
on the score mode, only the scores of the regions it names do. Every named region keeps its
proposal score and the probability the model gave its token (`vlmfo1.pipeline.scoring`), so the
three modes are three COCO results lists of the same boxes, each scored with pycocotools against
the split's COCO file. Prints one row per mode.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# Runnable as a script from a checkout (python benchmarks/score_modes.py) without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlmfo1.pipeline.scoring import SCORE_MODES, select_score

METRICS = ("AP", "AP50", "AP75", "AR100")


def answer_detect_everything(pipeline, items) -> dict[str, list]:
    """The regions (`vlmfo1.pipeline.results.Region`, grounded ones) each item's answer names."""
    from vlmfo1.pipeline import TaskRequest
    from vlmfo1.processing.image_processing import load_image

    requests = [TaskRequest("ask", load_image(item.image), {"question": item.prompt, "boxes": item.proposals,
                                                             "scores": item.proposal_scores}) for item in items]
    return {item.id: result.detections for item, result in zip(items, pipeline.run(requests))}


def mode_maps(items, regions: dict[str, list], coco: dict[str, Any], modes: Sequence[str] = SCORE_MODES) -> dict[str, dict]:
    """COCO bbox metrics of the same detections under each score mode."""
    from vlmfo1.evaluation.metrics.detection import image_subset_map

    table = {}
    for mode in modes:
        metrics = image_subset_map(coco, [
            (item.target["meta"]["scene_index"],
             [(r.label, r.box, select_score(mode, r.proposal_score, r.llm_score)) for r in regions[item.id]])
            for item in items])
        # Regions named under a label that is no category (as upstream, they are no detection).
        table[mode] = {**{k: metrics[k] for k in METRICS}, "detections": metrics["detections"],
                       "unknown_label_regions": metrics["unknown_label_detections"]}
    return table


def run(model: str, data: Path, split: str, limit: int | None = None, batch_size: int = 8,
        max_new_tokens: int = 96, device: str = "cpu") -> dict[str, Any]:
    from vlmfo1.evaluation.adapters.shapeworld import load_shapeworld
    from vlmfo1.pipeline import FO1Pipeline

    dataset = load_shapeworld(data, split=split, tasks=("detect_everything",)).limit(limit)
    if not dataset.items:
        raise SystemExit(f"{data}: no detect_everything records in split {split!r}")
    pipeline = FO1Pipeline.from_pretrained(model, proposer=None, device=device, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
    start = time.perf_counter()
    regions = answer_detect_everything(pipeline, dataset.items)
    seconds = time.perf_counter() - start
    coco = json.loads((Path(data) / f"{split}.coco.json").read_text())
    return {"model": str(model), "data": str(data), "split": split, "images": len(dataset.items),
            "generation_seconds": round(seconds, 1), "modes": mode_maps(dataset.items, regions, coco)}


def render(report: dict[str, Any]) -> str:
    lines = [f"{report['model']} on {report['images']} `{report['split']}` scenes of {report['data']} "
             f"(detect everything; answers in {report['generation_seconds']} s)", "",
             "| score | " + " | ".join(METRICS) + " | detections |", "|---" * (len(METRICS) + 2) + "|"]
    for mode, row in report["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{100 * row[k]:.1f}" for k in METRICS) + f" | {row['detections']} |")
    dropped = next(iter(report["modes"].values()))["unknown_label_regions"]
    if dropped:
        lines.append(f"\n{dropped} named regions had a label that is no category (not detections).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapeworld", help="a model folder or a bundled model name")
    parser.add_argument("--data", required=True, type=Path, help="a ShapeWorld folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="the first N records only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    report = run(args.model, args.data, args.split, args.limit, args.batch_size, args.max_new_tokens, args.device)
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
