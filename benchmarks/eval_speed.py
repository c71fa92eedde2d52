"""Time `evaluate_embeddings` at ICFG-PEDES-like scale and check it.

Builds seeded random embeddings shaped like a real test split: 20,000 caption
queries, 10,000 gallery images, 256-d. Each person id has 2-5 images (ids
shuffled over the gallery); every embedding, caption or image, is its
person's random identity vector plus noise, tuned so R1 comes out near 60 %
(IRRA's range on ICFG-PEDES): rankings neither perfect nor random.

Times `evaluate_embeddings` (best of 3), and again on embeddings without
signal (the slow case: every row is counted in full); checks it against the
reference `rank` on a subset of the queries (the full reference would sort a
20,000 x 10,000 matrix); writes benchmarks/results/eval_speed.json and prints
a markdown table.

    python benchmarks/eval_speed.py [--queries N] [--gallery N] [--dim D] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.metrics.fast_eval import evaluate_embeddings
from common.metrics.rank import rank

RESULT = Path(__file__).resolve().parent / "results" / "eval_speed.json"
NOISE = 2.0  # per-dimension noise around the unit-variance identity vector: R1 ~ 60 %


def make_data(n_queries: int, n_gallery: int, dim: int, seed: int):
    """Seeded (text, image, text_pids, image_pids); every id has 2-5 images."""
    gen = torch.Generator().manual_seed(seed)
    sizes = []
    while sum(sizes) < n_gallery:
        sizes.append(int(torch.randint(2, 6, (1,), generator=gen)))
    sizes[-1] -= sum(sizes) - n_gallery  # may leave a last id with 1 image
    image_pids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    image_pids = image_pids[torch.randperm(n_gallery, generator=gen)]
    identity = torch.randn(len(sizes), dim, generator=gen)
    image = identity[image_pids] + NOISE * torch.randn(n_gallery, dim, generator=gen)
    text_pids = image_pids[torch.randint(0, n_gallery, (n_queries,), generator=gen)]
    text = identity[text_pids] + NOISE * torch.randn(n_queries, dim, generator=gen)
    return text, image, text_pids, image_pids


def best_of_3(text, image, text_pids, image_pids) -> tuple[list[float], dict]:
    """Three timed runs of `evaluate_embeddings`: (seconds of each, metrics)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        metrics = evaluate_embeddings(text, image, text_pids, image_pids)
        times.append(time.perf_counter() - t0)
    return times, metrics


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--gallery", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-queries", type=int, default=2_000)
    args = ap.parse_args()

    text, image, text_pids, image_pids = make_data(args.queries, args.gallery, args.dim, args.seed)
    load_before = os.getloadavg()[0]
    times, metrics = best_of_3(text, image, text_pids, image_pids)
    # Worst case for the evaluator: embeddings without signal, positives spread
    # over the whole ranking (every row is counted in full).
    gen = torch.Generator().manual_seed(args.seed + 1)
    noise_text, noise_image = torch.randn(text.shape, generator=gen), torch.randn(image.shape, generator=gen)
    times_random, _ = best_of_3(noise_text, noise_image, text_pids, image_pids)

    sub = slice(0, min(args.check_queries, args.queries))
    t_n, i_n = F.normalize(text[sub], dim=1), F.normalize(image, dim=1)
    expected = rank(t_n @ i_n.T, text_pids[sub], image_pids)
    got = evaluate_embeddings(text[sub], image, text_pids[sub], image_pids)
    if got != expected:
        raise SystemExit(f"mismatch on the first {sub.stop} queries:\n fast {got}\n rank {expected}")

    result = {
        "n_queries": args.queries,
        "n_gallery": args.gallery,
        "dim": args.dim,
        "seconds": round(min(times), 3),
        "all_seconds": [round(t, 3) for t in times],
        "seconds_random_embeddings": round(min(times_random), 3),
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        "checked_against_rank": f"first {sub.stop} queries, exact match",
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_1min_at_start": round(load_before, 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "command": "python benchmarks/eval_speed.py",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")

    m = metrics
    size = f"{args.queries:,} | {args.gallery:,} | {args.dim}"
    lines = ["| embeddings | queries | gallery | dim | best of 3 (s) | R1 | mAP | mINP |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| realistic | {size} | {min(times):.2f} | {m['R1']:.2f} | {m['mAP']:.2f} | {m['mINP']:.2f} |",
             f"| random (worst case) | {size} | {min(times_random):.2f} | | | |", "",
             f"Realistic runs: {', '.join(f'{t:.2f}' for t in times)} s; load average at start {load_before:.1f} on "
             f"{os.cpu_count()} CPUs; reference check on {sub.stop} queries: exact match. Command: `{result['command']}`."]
    RESULT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {RESULT}")


if __name__ == "__main__":
    main()
