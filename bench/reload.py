"""What a hot reload costs a running worker: the pause the scoring loop sees, and memory.

``python -m bench.reload [--cycles 5] [--trees 100] [--features 30] [--batch 1000]
[--rate 1500] [--workers 2] [--skip-under-load]``

In one process: two versions of a realistic model (like ``bench.throughput``) in a temporary
store, the real :class:`forestream.worker.models.ModelFollower` on a fresh models topic of a real
broker,
and a thread that scores batches continuously the way the worker loop does (read
``follower.current()`` once per batch, decode, score). Each cycle announces the other version
and reports:

- ``load``: promotion acked on the topic -> the follower swapped (topic read, hash check,
  unpickling, schema check, warm-up; all in the follower's background thread);
- ``swap``: the swap itself, one attribute assignment (timed in isolation below);
- the pause the loop saw: the gap between the last batch scored by the old version and the
  first by the new one, and the largest gap between batches while the load was running
  (the loader shares the GIL with the loop), next to the median gap without a reload;
- VmRSS (``/proc/self/status``, after ``gc.collect()``) before and after each reload.

Then, unless ``--skip-under-load``, the same promotion end to end (:mod:`bench.promotion`): the
real ``forestream models promote`` command against ``--workers`` real worker processes scoring
``--rate`` rec/s: how long the command takes, and when each worker's first prediction by the
new version comes after it returned.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import tempfile
import threading
import time
import timeit
import uuid
from dataclasses import dataclass, field
from pathlib import Path


def rss_mib() -> float:
    """Resident set size now, after a full collection (what the process really holds)."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class ScoringLoop:
    """Scores one batch after another with whatever the follower serves at batch start."""

    follower: object
    values: list[bytes]
    batch: int
    done: list[tuple[float, float, str]] = field(default_factory=list)
    """(batch started, batch finished, version) per scored batch, monotonic seconds."""
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from forestream.worker.decoding import decode_batch
        from forestream.worker.scoring import score_frame

        offset = 0
        while not self._stop.is_set():
            model = self.follower.current()  # type: ignore[attr-defined]
            started = time.monotonic()
            chunk = self.values[offset : offset + self.batch]
            offset = (offset + self.batch) % max(len(self.values) - self.batch, 1)
            decoded = decode_batch(chunk, model.schema)
            score_frame(model.pipeline, decoded.frame, model.classes)
            self.done.append((started, time.monotonic(), model.version))
            del model, decoded  # hold no version across the wait for the next batch

    def stop(self) -> None:
        self._stop.set()


def gaps_ms(done: list[tuple[float, float, str]], since: float, until: float) -> list[float]:
    """Gaps between consecutive batch completions inside [since, until]."""
    ends = [end for _start, end, _v in done if since <= end <= until]
    return [(b - a) * 1000 for a, b in itertools.pairwise(ends)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1000, help="records per scored batch")
    parser.add_argument("--bootstrap-servers", help="broker (default: the local one)")
    parser.add_argument("--rate", type=float, default=1500.0, help="rec/s of the end-to-end part")
    parser.add_argument("--workers", type=int, default=2, help="workers of the end-to-end part")
    parser.add_argument(
        "--skip-under-load", action="store_true", help="only the in-process measurement"
    )
    args = parser.parse_args(argv)
    in_process(args)
    if not args.skip_under_load:
        from bench import promotion

        print("\npromotion under load (real CLI, real workers):")
        given = ["--bootstrap-servers", args.bootstrap_servers] if args.bootstrap_servers else []
        argv = [
            *given,
            "--rate", str(args.rate), "--workers", str(args.workers),
            "--cycles", str(max(args.cycles, 2)),
            "--trees", str(args.trees), "--features", str(args.features),
        ]  # fmt: skip
        promotion.run(promotion.parse_args(argv))


def in_process(args: argparse.Namespace) -> None:
    """The in-process part: the real follower beside a scoring thread, no Kafka load."""
    from bench.throughput import broker
    from bench.workload import MODEL_NAME, announce_promotion, make_workload
    from forestream.registry.local import LocalModelStore
    from forestream.runtime.logs import configure_logging
    from forestream.worker.models import ModelFollower, store_loader

    configure_logging("console", level="WARNING")
    with (
        tempfile.TemporaryDirectory(prefix="forestream-bench-reload-") as tmp,
        broker(args.bootstrap_servers) as bootstrap,
    ):
        store = LocalModelStore(Path(tmp))
        print(f"training 2 versions: {args.trees} trees, {args.features} features ...")
        first = make_workload(4000, args.features, args.trees, 5000, store, seed=0)
        second = make_workload(10, args.features, args.trees, 5000, store, seed=1)
        versions = [first.metadata, second.metadata]
        values = first.values
        del first, second  # the bench keeps no model of its own: RSS is the follower's
        topic = f"bench.reload.{uuid.uuid4().hex[:8]}.models"

        follower = ModelFollower(
            bootstrap, topic, MODEL_NAME, store_loader(Path(tmp), MODEL_NAME)
        ).start()
        announce_promotion(bootstrap, topic, versions[0])
        if follower.wait(timeout_s=120) is None:
            raise SystemExit("the follower loaded nothing in 120 s")
        loop = ScoringLoop(follower, values, args.batch)
        scorer = threading.Thread(target=loop.run, name="scoring", daemon=True)
        scorer.start()
        time.sleep(2.0)
        baseline = gaps_ms(loop.done, 0.0, time.monotonic())

        holder = type("Holder", (), {})()
        holder.active = object()
        swap_us = min(timeit.repeat("h.active = m", globals={"h": holder, "m": 1}, number=10**5))
        print(
            f"baseline: {len(baseline) + 1} batches of {args.batch}, median gap between batches "
            f"{statistics.median(baseline):.1f} ms; swap (attribute assignment) "
            f"{swap_us / 10**5 * 1e6:.3f} us"
        )
        print(
            "cycle  to    load_s  old->new gap_ms  max gap during load_ms  RSS before -> after MiB"
        )
        rss_start = rss_mib()
        try:
            for cycle in range(1, args.cycles + 1):
                target = versions[cycle % 2]
                rss_before = rss_mib()
                announced = time.monotonic()
                announce_promotion(bootstrap, topic, target)
                while (current := follower.current()) is None or current.version != target.version:
                    if time.monotonic() - announced > 120:
                        raise SystemExit(f"{target.version} not served after 120 s")
                    time.sleep(0.005)
                swapped = time.monotonic()
                del current
                while not loop.done or loop.done[-1][2] != target.version:
                    time.sleep(0.005)
                time.sleep(1.0)  # let the old model's last batch finish and be dropped
                old_end = max(end for _s, end, v in loop.done if v != target.version)
                new_end = min(
                    end for _s, end, v in loop.done if v == target.version and end > old_end
                )
                during = gaps_ms(loop.done, announced, new_end)
                rss_after = rss_mib()
                print(
                    f"{cycle:>5}  {target.version:<4} {swapped - announced:7.2f}  "
                    f"{(new_end - old_end) * 1000:15.1f}  {max(during, default=0.0):22.1f}  "
                    f"{rss_before:8.1f} -> {rss_after:.1f}"
                )
                loop.done = [d for d in loop.done if d[1] >= new_end]
        finally:
            loop.stop()
            scorer.join(timeout=30)
            follower.stop()
        print(f"RSS growth over {args.cycles} reloads: {rss_mib() - rss_start:+.1f} MiB")


if __name__ == "__main__":
    main()
