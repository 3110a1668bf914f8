"""Load test of `vlmfo1 serve`: many concurrent requests at a local server, with and without micro-batching.

    python benchmarks/serve_load.py                       # a tiny random model, 256 concurrent requests
    python benchmarks/serve_load.py --model PATH --requests 400 --batch-sizes 1,4,8,16

For each micro-batch size a fresh server is started (`vlmfo1 serve` in a subprocess), warmed up,
then all requests are sent at once (one connection each) to /v1/detect with three given boxes
(no proposer, so the figures are the model's and the server's). Prints p50/p99 latency, throughput,
errors (0 expected: the queue is sized to hold every request) and the batches the server formed
(/healthz).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scene_b64(seed: int) -> str:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (160, 120), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, 120)), int(rng.integers(0, 80))
        draw.ellipse([x, y, x + 35, y + 35], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


BOXES = [[10, 12, 50, 52], [70, 40, 120, 90], [5, 70, 40, 110]]


def start_server(model: str, port: int, batch_size: int, window_ms: float, max_new_tokens: int, queue: int, threads: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable, "-m", "vlmfo1.cli.main", "serve", "--model", model, "--port", str(port), "--proposer", "contours",
        "--max-batch-size", str(batch_size), "--batch-window-ms", str(window_ms), "--max-queue", str(queue),
        "--timeout", "600", "--max-new-tokens", str(max_new_tokens), "--log-level", "warning",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not start within 300 s")


async def fire(url: str, bodies: list[dict]) -> tuple[list[float], list[str], float]:
    """Sends every body at once; returns latencies (s), error descriptions, wall time (s)."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one(body):
            started = time.perf_counter()
            try:
                response = await client.post(url, json=body)
                error = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            return time.perf_counter() - started, error

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(body) for body in bodies))
        wall = time.perf_counter() - started
    return [latency for latency, _ in outcomes], [error for _, error in outcomes if error], wall


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_one(model: str, batch_size: int, args) -> dict:
    port = free_port()
    server = start_server(model, port, batch_size, args.window_ms, args.max_new_tokens, max(args.requests * 2, 64), args.threads)
    try:
        url = f"http://127.0.0.1:{port}/v1/detect"
        images = [scene_b64(k) for k in range(16)]
        bodies = [{"image": images[k % len(images)], "categories": "circle", "boxes": BOXES} for k in range(args.requests)]
        asyncio.run(fire(url, bodies[: max(batch_size, 4)]))  # warm-up (first calls pay one-off costs)
        before = httpx.get(f"http://127.0.0.1:{port}/healthz").json()["batching"]
        latencies, errors, wall = asyncio.run(fire(url, bodies))
        after = httpx.get(f"http://127.0.0.1:{port}/healthz").json()["batching"]
    finally:
        server.terminate()
        server.wait(30)
    batches = after["batches"] - before["batches"]
    return {
        "batch_size": batch_size,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "throughput": len(latencies) / wall,
        "wall_s": wall,
        "batches": batches,
        "mean_batch": (after["completed"] - before["completed"]) / batches if batches else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random FO1 made in a temporary folder)")
    parser.add_argument("--requests", type=int, default=256, help="concurrent requests per run (>= 200 for the issue's test)")
    parser.add_argument("--batch-sizes", default="1,8", help="micro-batch sizes to compare (1 = no batching)")
    parser.add_argument("--window-ms", type=float, default=10.0, help="micro-batching window")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (OMP_NUM_THREADS)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from vlmfo1.training.tiny import init_tiny

            model = str(Path(scratch) / "tiny")
            init_tiny(model, size="tiny", tokenizer="qwen")
        rows = [run_one(model, int(size), args) for size in args.batch_sizes.split(",")]

    print(f"model: {args.model or 'tiny random FO1'}; {args.requests} concurrent /v1/detect requests, 3 boxes, "
          f"max_new_tokens={args.max_new_tokens}, window {args.window_ms:g} ms, {args.threads} torch thread(s), {os.cpu_count()} CPUs")
    print(f"{'batch':>5} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'wall s':>7} {'batches':>7} {'mean batch':>10}")
    for row in rows:
        print(f"{row['batch_size']:>5} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} "
              f"{row['throughput']:>7.2f} {row['wall_s']:>7.1f} {row['batches']:>7} {row['mean_batch']:>10.2f}")
        if row["first_error"]:
            print(f"      first error: {row['first_error']}")
    if len(rows) > 1:
        base = rows[0]
        for row in rows[1:]:
            print(f"micro-batching {row['batch_size']} vs {base['batch_size']}: throughput x{row['throughput'] / base['throughput']:.2f}, "
                  f"p50 x{row['p50_ms'] / base['p50_ms']:.2f}, p99 x{row['p99_ms'] / base['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
