"""Open-loop load generator: POST /api/v1/leads at a fixed rate, whatever the responses do.

Each request has a scheduled send time (start + i / rate). Latency is measured
from that scheduled time, not from when the request actually left, so a
server that falls behind cannot hide it (no coordinated omission). Bounded in
count and time; only ever targets a loopback URL.

    python bench/loadgen.py --url http://127.0.0.1:8100 --key swx_... --rate 5000 --seconds 60 --out lat.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_REQUESTS = 200_000
MAX_SECONDS = 600
REQUEST_TIMEOUT = 10.0


def phone_for(i: int, run: int) -> str:
    # Valid US numbers in the 415 area: exchange 200-999, line 0000-9999. `run`
    # shifts the range so separate runs never deduplicate into each other.
    n = run * 1_000_000 + i
    return f"+1415{200 + (n // 10_000) % 800:03d}{n % 10_000:04d}"


async def run(url: str, key: str, rate_per_min: float, seconds: float, run_id: int, progress: bool) -> dict:
    total = min(int(rate_per_min / 60 * seconds), MAX_REQUESTS)
    interval = 60.0 / rate_per_min
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    outcomes: list[tuple[int, str]] = []  # (request index, HTTP status or exception name), for chaos windows
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def send(i: int, scheduled: float) -> None:
            body = json.dumps({"name": f"Bench Lead {i}", "phone": phone_for(i, run_id), "source": "bench", "consent": True})
            try:
                async with session.post(f"{url}/api/v1/leads", data=body) as response:
                    await response.read()
                    statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
                    outcomes.append((i, str(response.status)))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                outcomes.append((i, type(exc).__name__))
                return
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter()
        start_wall = time.time()  # request i is scheduled at start_wall + i * interval (wall clock, for joins with the database)
        tasks = []
        last_report = start
        for i in range(total):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, scheduled)))
            now = time.perf_counter()
            if progress and now - last_report >= 1.0:
                last_report = now
                done = len(latencies)
                print(f"\r  {rate_per_min:>6.0f}/min  sent {i + 1:>6}/{total}  answered {done:>6}", end="", file=sys.stderr, flush=True)
            if now - start > MAX_SECONDS:
                break
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    if progress:
        print(file=sys.stderr)
    return {
        "target_rate_per_min": rate_per_min,
        "requests": len(tasks),
        "elapsed_s": elapsed,
        "scheduled_start_epoch": start_wall,
        "interval_s": interval,
        "statuses": statuses,
        "errors": errors,
        "latencies_s": latencies,
        "outcomes": sorted(outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--rate", type=float, required=True, help="leads per minute")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--run-id", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in LOOPBACK:
        sys.exit("loadgen only targets loopback addresses")
    if not 0 < args.seconds <= MAX_SECONDS:
        sys.exit(f"--seconds must be between 0 and {MAX_SECONDS}")
    result = asyncio.run(run(args.url, args.key, args.rate, args.seconds, args.run_id, args.progress))
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
