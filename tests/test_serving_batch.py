"""`vlmfo1 batch`: inputs, resumable outputs, the worker, and a local Ray run resumed after interruption."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vlmfo1.serving.batch import (
    BatchJobConfig,
    BatchPredictor,
    JsonlResults,
    ParquetResults,
    open_results,
    read_inputs,
    run_batch_job,
)


def scene(seed: int, size=(96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
    x, y = int(rng.integers(5, 40)), int(rng.integers(5, 30))
    ImageDraw.Draw(image).ellipse([x, y, x + 30, y + 30], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def image_folder(root: Path, count: int) -> Path:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for k in range(count):
        scene(k).save(root / ("sub" if k % 2 else ".") / f"img{k:02d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def row(item_id, error=None):
    return {"id": item_id, "task": "detect", "result": None if error else {"answer": item_id}, "error": error}


# -- inputs --------------------------------------------------------------------------------------
def test_folder_inputs_are_its_images_recursively_with_relative_ids(tmp_path):
    inputs = read_inputs(image_folder(tmp_path / "images", 4))
    assert inputs.ids == ["img00.png", "img02.png", "sub/img01.png", "sub/img03.png"]
    assert all(Path(p).is_file() for p in inputs.paths)


def test_list_inputs_resolve_relative_paths_and_refuse_duplicates(tmp_path):
    image_folder(tmp_path / "images", 2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nimages/img00.png\n\n{tmp_path / 'images' / 'sub' / 'img01.png'}\n")
    inputs = read_inputs(listing)
    assert inputs.ids == ["images/img00.png", str(tmp_path / "images" / "sub" / "img01.png")]
    assert inputs.paths[0] == str(tmp_path / "images" / "img00.png")
    listing.write_text("images/img00.png\nimages/img00.png\n")
    with pytest.raises(ValueError, match="appears more than once"):
        read_inputs(listing)


def test_parquet_inputs_hold_bytes_ids_and_boxes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "image": [png(scene(0)), png(scene(1))], "boxes": [[[1.0, 2.0, 30.0, 40.0]], None]}), path)
    inputs = read_inputs(path)
    assert inputs.ids == ["a", "b"] and inputs.paths == [None, None]
    assert inputs.data[0] == png(scene(0)) and inputs.boxes == [[[1.0, 2.0, 30.0, 40.0]], None]
    rows = inputs.rows({"b"})
    assert [r["id"] for r in rows] == ["b"] and rows[0]["boxes"] == ""
    pq.write_table(pa.table({"picture": [b"x"]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no 'image' column"):
        read_inputs(tmp_path / "bad.parquet")


def test_bad_inputs_are_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        read_inputs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_inputs(tmp_path / "missing")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="give a folder"):
        read_inputs(tmp_path / "x.csv")
    with pytest.raises(ValueError, match=".jsonl or .parquet"):
        open_results(tmp_path / "out.csv")


# -- outputs ---------------------------------------------------------------------------------------
def test_jsonl_results_resume_after_a_torn_last_line(tmp_path):
    results = JsonlResults(tmp_path / "out.jsonl")
    assert results.done_ids() == set()
    results.append([row("a"), row("b")])
    with results.path.open("a") as handle:
        handle.write('{"id": "c", "task": "det')  # the process died while writing this line
    assert results.done_ids() == {"a", "b"}  # c is not done: it will be run again
    assert results.path.read_text().endswith("\n")
    results.append([row("c")])
    assert [r["id"] for r in results.rows()] == ["a", "b", "c"]


def test_jsonl_retry_errors_drops_their_rows(tmp_path):
    results = JsonlResults(tmp_path / "out.jsonl")
    results.append([row("a"), row("b", error="OSError: unreadable"), row("c")])
    assert results.drop_errors() == 1
    assert results.done_ids() == {"a", "c"}


def test_jsonl_output_that_is_not_ours_is_an_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="out.jsonl:1 is not valid JSON"):
        JsonlResults(path).done_ids()


def test_parquet_results_are_whole_parts(tmp_path):
    pytest.importorskip("pyarrow")
    results = ParquetResults(tmp_path / "out.parquet")
    results.append([row("a"), row("b", error="ValueError: x")])
    results.append([row("c")])
    (results.path / ".part-000002.parquet.tmp").write_bytes(b"half a file")  # an interrupted write
    assert sorted(p.name for p in results.path.glob("part-*.parquet")) == ["part-000000.parquet", "part-000001.parquet"]
    assert results.done_ids() == {"a", "b", "c"}
    assert [r["result"] for r in results.rows()] == [{"answer": "a"}, None, {"answer": "c"}]
    assert results.drop_errors() == 1 and results.done_ids() == {"a", "c"}


def test_job_config_checks_the_task_text():
    assert BatchJobConfig("detect", text=" circle ").task_args == {"categories": "circle"}
    assert BatchJobConfig("caption", detailed=True).task_args == {"detailed": True}
    with pytest.raises(ValueError, match="needs --text"):
        BatchJobConfig("count")
    with pytest.raises(ValueError, match="takes no --text"):
        BatchJobConfig("grounded_caption", text="x")
    with pytest.raises(ValueError, match="unknown batch task"):
        BatchJobConfig("chat")


# -- the worker, without Ray -------------------------------------------------------------------------
def test_predictor_answers_rows_and_reports_bad_images(serving_model_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scene(0).save(tmp_path / "good.png")
        predictor = BatchPredictor(BatchJobConfig("detect", text="circle", model=str(serving_model_dir), proposer="contours",
                                                  max_new_tokens=6, images_per_call=2))
        batch = {
            "id": np.array(["good", "bytes", "broken", "missing"], dtype=object),
            "path": np.array([str(tmp_path / "good.png"), "", "", str(tmp_path / "nope.png")], dtype=object),
            "data": np.array([b"", png(scene(1)), b"not an image", b""], dtype=object),
            "boxes": np.array(["", json.dumps([[1, 2, 30, 40]]), "", ""], dtype=object),
        }
        output = predictor(batch)
    finally:
        torch.set_num_threads(threads)
    assert output["id"] == ["good", "bytes", "broken", "missing"] and output["task"] == ["detect"] * 4
    good, given = json.loads(output["result"][0]), json.loads(output["result"][1])
    assert good["proposals"]["source"] == "contours" and good["queries"] == ["Please detect circle in this image. Answer the question with object indexes."]
    assert given["proposals"]["boxes"] == [[1, 2, 30, 40]] and given["proposals"]["source"] == "user"
    assert output["error"][:2] == ["", ""]
    assert output["result"][2:] == ["", ""]
    assert "cannot decode" in output["error"][2] and "FileNotFoundError" in output["error"][3]


# -- Ray, local --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_batch_resumes_without_duplicates_or_gaps(local_ray, serving_model_dir, tmp_path):
    folder = image_folder(tmp_path / "images", 6)
    (folder / "broken.png").write_bytes(b"not a png")
    inputs = read_inputs(folder)
    output = tmp_path / "results.jsonl"
    config = BatchJobConfig("count", text="circle", model=str(serving_model_dir), proposer="contours", max_new_tokens=4, images_per_call=4)

    first = run_batch_job(inputs, output, config, limit=3, progress=False)  # stopped part-way
    assert first.written == 3 and first.already_done == 0
    with output.open("a") as handle:
        handle.write('{"id": "sub/img05.png", "ta')  # and killed in the middle of a line
    second = run_batch_job(inputs, output, config, progress=False)
    assert second.already_done == 3 and second.written == len(inputs) - 3

    rows = list(JsonlResults(output).rows())
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(inputs.ids) and len(ids) == len(set(ids))  # every image exactly once
    by_id = {r["id"]: r for r in rows}
    assert by_id["broken.png"]["result"] is None and "cannot decode" in by_id["broken.png"]["error"]
    for item_id in inputs.ids:
        if item_id != "broken.png":
            result = by_id[item_id]["result"]
            assert by_id[item_id]["error"] is None and result["task"] == "count"
            assert tuple(result["image_size"]) == (96, 72) and result["proposals"]["source"] == "contours"

    third = run_batch_job(inputs, output, config, progress=False)  # nothing left to do: Ray is not even asked
    assert third.written == 0 and len(list(JsonlResults(output).rows())) == len(inputs)


@pytest.mark.slow
def test_cli_batch_interrupted_by_a_signal_then_resumed(serving_model_dir, tmp_path):
    """A real interruption: SIGINT to `vlmfo1 batch` once it has written some rows, then the same command again."""
    folder = image_folder(tmp_path / "images", 24)
    output = tmp_path / "results.parquet"
    command = [sys.executable, "-m", "vlmfo1.cli.main", "batch", str(folder), str(output), "--task", "detect", "--text", "circle",
               "--model", str(serving_model_dir), "--proposer", "contours", "--max-new-tokens", "4", "--images-per-call", "1",
               "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Ctrl+C's default action, whatever this test process inherited (a background job ignores SIGINT).
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(output.glob("part-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the interrupt must land before all 24 images are done, on fast machines too
    process.send_signal(signal.SIGINT)
    process.wait(120)
    partial = ParquetResults(output).done_ids()
    assert 0 < len(partial) < 24, "interrupt came too late to test resuming"
    (folder / "broken.png").write_bytes(b"not a png")
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    rows = list(ParquetResults(output).rows())
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(read_inputs(folder).ids) and len(ids) == len(set(ids))
    assert [r["id"] for r in rows if r["error"]] == ["broken.png"]
    # --retry-errors runs the failed image again (and only it): still one row per image.
    subprocess.run(command + ["--retry-errors"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    rows = list(ParquetResults(output).rows())
    assert sorted(r["id"] for r in rows) == sorted(ids) and [r["id"] for r in rows[-1:]] == ["broken.png"]
