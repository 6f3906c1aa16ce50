"""Benchmark the server as a hostile client meets it (issue 22): what each attack costs a real
`multitag serve`, with the project's limits on (the defaults) and off (the baseline).

Both servers are the project's own code serving the same registered MobileNetV2 224 model from a
throwaway registry, as their own uvicorn processes on loopback, with `serve.trust_loopback: false`
so that this script's clients are network clients (each attack from its own 127.<n>.x.y addresses). The baseline
turns every bound off (decoded size, decode slots, requests in flight, per-client rates and
storage): what the server did before them, with the same decoder.

Attacks, one after another against each server:
- bit-depth bombs: 8 clients at once, each sending requests of 16 files of a 16-bit 8,900 x 8,900
  PNG (150 KB each, 158 MB decoded, 79 MP: under the pixel cap);
- a pixel bomb: a 1-bit 30,000 x 30,000 PNG (900 MP), 8 requests;
- a /feedback flood from one client (300 corrections of distinct photos) and from 16 clients
  (20 each, from 16 addresses);
- oversized bodies (a declared 1 GB, and a 200 MB chunked stream), malformed multipart bodies;
- path traversal on /images, and requests under a rebinding Host name;
- schemathesis: `--fuzz` (1,200) requests generated from the server's own /openapi.json, every
  operation, against a project server with the per-client rate limits off (one address would
  otherwise be throttled before its requests reach the code).

For each: requests sent, answers by status, 5xx count (target 0), the server's peak RSS (target:
under 1.5 GB with 8 concurrent bomb clients), bytes written under its data folder, and whether
/health answered 200 within 2 s throughout (polled every 0.2 s). A baseline server whose RSS
passes `--rss-cap-gb` is killed: its row then says so.

    .venv/bin/python bench/abuse.py                  # both servers, every attack
    .venv/bin/python bench/abuse.py --bomb-requests 1 --variants project

`--replicas` adds two `multitag serve` replicas sharing one queue on a private PostgreSQL cluster
(and one image folder): the bombs split across them, and one client's /feedback flood sent to
both (each replica keeps its own rate budget; the storage quota, here 5 MB, is the queue's, shared).

Writes bench/results/abuse.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from harness import RESULTS_DIR, ROOT, machine_info
from serve import JPEG_DIR, PROJECT_SERVER, WEIGHTS, build_model, register_champion, running, throwaway_workspace, write_params

RESULTS_PATH = RESULTS_DIR / "abuse.json"
BOMB_CLIENTS = 8
RSS_TARGET_GB = 1.5
UNBOUNDED = {  # the baseline: every bound of serving/limits.py and serving/quotas.py off
    "max_decode_mb": 1e6,
    "decode_slots": 64,
    "max_requests_in_flight": 10_000,
    "client_requests_per_minute": 0,
    "client_upload_mb_per_hour": 0,
    "client_storage_mb": 0,
}


@dataclass
class Watch:
    """Polls the server process's RSS (every 50 ms) and /health (every 0.2 s) while an attack runs."""

    url: str
    pid: int
    rss_cap: int
    peak_rss: int = 0
    health_failures: int = 0
    killed: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        import httpx
        import psutil

        process, next_health = psutil.Process(self.pid), 0.0
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
                if self.peak_rss > self.rss_cap and not self.killed:
                    process.kill()
                    self.killed = True
            if time.monotonic() >= next_health and not self.killed:
                next_health = time.monotonic() + 0.2
                try:
                    self.health_failures += httpx.get(f"{self.url}/health", timeout=2).status_code != 200
                except httpx.HTTPError:
                    self.health_failures += 1
            time.sleep(0.05)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Watch]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def png(pixels: np.ndarray, **options: object) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **options)
    return buffer.getvalue()


def grey16_bomb(side: int = 8900) -> bytes:
    pixels = np.zeros((side, side), dtype=np.uint16)
    pixels[::7] = 60000
    return png(pixels)


def pixel_bomb(side: int = 30_000) -> bytes:
    return png(np.zeros((side, side), dtype=bool), optimize=True)


def noise_png(seed: int, side: int = 90) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def client(url: str, address: str = "127.0.0.1", timeout: float = 120):
    """An HTTP client whose requests come from `address` (any 127.x address is this machine's)."""
    import httpx

    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=address))


def status_of(call: Callable[[], object]) -> int | str:
    """The answer's status, or the error's name when there was none (a reset connection, a timeout)."""
    import httpx

    try:
        return call().status_code  # type: ignore[attr-defined]
    except (httpx.HTTPError, OSError) as err:  # the server closed the connection, or never answered
        return type(err).__name__


def address(attack: int, index: int = 0) -> str:
    """Client `index` of attack number `attack`: no two attacks share a client's budget."""
    return f"127.{attack}.{index // 250}.{index % 250 + 1}"


def bomb_requests(url: str, attack: int, bomb: bytes, clients: int, requests: int) -> list[int | str]:
    files = [("files", (f"bomb{i}.png", bomb, "image/png")) for i in range(16)]

    def one_client(index: int) -> list[int | str]:
        with client(url, address(attack, index)) as http:
            return [status_of(lambda: http.post("/predict", files=files)) for _ in range(requests)]

    with ThreadPoolExecutor(clients) as pool:
        return [status for statuses in pool.map(one_client, range(clients)) for status in statuses]


def feedback_flood(url: str, attack: int, label: str, clients: int, per_client: int, first_seed: int) -> list[int | str]:
    def one_client(index: int) -> list[int | str]:
        with client(url, address(attack, index)) as http:
            return [
                status_of(
                    lambda seed=first_seed + index * per_client + i: http.post(
                        "/feedback", data={"labels": label}, files={"file": (f"{seed}.png", noise_png(seed), "image/png")}
                    )
                )
                for i in range(per_client)
            ]

    with ThreadPoolExecutor(clients) as pool:
        return [status for statuses in pool.map(one_client, range(clients)) for status in statuses]


def oversized(url: str, attack: int) -> list[int | str]:
    def chunks() -> Iterator[bytes]:  # a well-formed file part that never ends: 200 MB of it
        yield b"--x\r\nContent-Disposition: form-data; name=files; filename=big.png\r\nContent-Type: image/png\r\n\r\n"
        block = b"\0" * 1_000_000
        for _ in range(200):
            yield block

    with client(url, address(attack)) as http:
        streamed = status_of(lambda: http.post("/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}))
    return [declared_gigabyte(url), streamed]


def declared_gigabyte(url: str) -> int | str:
    """A request that declares a 1 GB body and sends 1 KB of it (an HTTP client refuses to)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: {10**9}\r\n\r\n"
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + b"x" * 1000)
            answer = sock.recv(4096).split(b" ", 2)
    except OSError as err:
        return type(err).__name__
    return int(answer[1]) if len(answer) > 1 and answer[1].isdigit() else "no answer"


def malformed(url: str, attack: int, count: int = 50) -> list[int | str]:
    bodies = [
        (b"--x\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n" + os.urandom(64), "multipart/form-data; boundary=x"),
        (b"not multipart at all", "multipart/form-data; boundary=x"),
        (b"--x--\r\n", "multipart/form-data"),
        (os.urandom(256), "multipart/form-data; boundary=" + "y" * 200),
        (b"--x\r\nContent-Disposition: form-data; name=files\r\n\r\nabc\r\n--x--\r\n", "multipart/form-data; boundary=x"),
    ]
    with client(url, address(attack)) as http:
        return [
            status_of(lambda body=body, kind=kind, path=path: http.post(path, content=body, headers={"Content-Type": kind}))
            for i in range(count)
            for body, kind in [bodies[i % len(bodies)]]
            for path in ("/predict", "/feedback")
        ]


def traversal(url: str, attack: int) -> list[int | str]:
    paths = [
        "/images/../../params.yaml",
        "/images/..%2F..%2Fparams.yaml",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/....//....//etc/passwd",
        "/images/" + "a" * 64 + "/../../../etc/passwd",
        "/images/" + "0" * 63 + "%00",
        "/static/../params.yaml",
        "/static/..%2Fparams.yaml",
    ]
    with client(url, address(attack)) as http:
        answers = [(path, status_of(lambda path=path: http.get(path))) for path in paths]
        leaked = [path for path in paths if b"model_name" in http.get(path).content or b"root:" in http.get(path).content]
    if leaked:
        print(f"LEAK: {leaked}", flush=True)
    return [status for _, status in answers] + ["LEAKED"] * len(leaked)


def rebinding(url: str, attack: int) -> list[int | str]:
    with client(url, address(attack)) as http:
        return [
            status_of(lambda host=host, method=method, path=path: http.request(method, path, headers={"Host": host}))
            for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.nip.io")
            for method, path in (("GET", "/review"), ("GET", "/health"), ("POST", "/feedback"))
        ]


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def server_pid(url: str) -> int:
    """The child process listening on the URL's port."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in child.net_connections("tcp")):
                return child.pid
    raise RuntimeError(f"no process of ours listens on {port}")


def attack_table(url: str, data_dir: Path, label: str, args: argparse.Namespace) -> dict[str, dict]:
    """Run every attack against one server; a row per attack."""
    attacks: dict[str, Callable[[int], list[int | str]]] = {  # each gets its own number: its clients' addresses
        f"bit-depth bombs, {BOMB_CLIENTS} clients x 16 files": lambda n: bomb_requests(
            url, n, grey16_bomb(), BOMB_CLIENTS, args.bomb_requests
        ),
        "pixel bomb (900 MP)": lambda n: bomb_requests(url, n, pixel_bomb(), 8, 1),
        "/feedback flood, 1 client x 300": lambda n: feedback_flood(url, n, label, 1, 300, 0),
        "/feedback flood, 16 clients x 20": lambda n: feedback_flood(url, n, label, 16, 20, 10_000),
        "oversized bodies": lambda n: oversized(url, n),
        "malformed multipart": lambda n: malformed(url, n),
        "path traversal on /images": lambda n: traversal(url, n),
        "rebinding Host headers": lambda n: rebinding(url, n),
    }
    rows = {}
    for number, (name, attack) in enumerate(attacks.items(), start=1):
        rows[name] = measured(url, data_dir, name, partial(attack, number), args.rss_cap_gb)
        if rows[name]["killed_at_rss_cap"]:
            print(f"  the server passed {args.rss_cap_gb} GB and was killed: the remaining attacks are not run", flush=True)
            break
    return rows


def measured(url: str, data_dir: Path, name: str, attack: Callable[[], list[int | str]], rss_cap_gb: float) -> dict:
    """One attack's row against one server, its RSS and /health watched meanwhile."""
    watch = Watch(url, server_pid(url), int(rss_cap_gb * 2**30))
    with watch.watching():
        return watched_row(data_dir, name, attack, [watch])


def fuzz(url: str, examples: int) -> list[int | str]:
    """Requests schemathesis generates from the server's /openapi.json, every operation, sent as they come."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: list[int | str] = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def send(case) -> None:
        statuses.append(status_of(lambda: case.call(base_url=url, timeout=60)))

    send()
    return statuses


def replicas_table(command: list[str], scratch: Path, label: str, args: argparse.Namespace) -> dict[str, dict]:
    """Two replicas sharing one queue on PostgreSQL (a private cluster, tests/engines.py) and one
    image folder, with the defaults: the bombs split across them, and one client's /feedback flood
    and storage sent to both. A row per attack; RSS is the larger replica's peak."""
    sys.path.insert(0, str(ROOT / "tests"))
    from engines import PostgresCluster

    from multitag.serving.app import PARAMS_ENV

    cluster_root = Path(tempfile.mkdtemp(prefix="multitag-bench-postgres-"))
    cluster = PostgresCluster.start(cluster_root)
    try:
        env = {
            PARAMS_ENV: str(write_params(scratch, "replicas", 16, trust_loopback=False, client_storage_mb=5)),
            "MULTITAG_FEEDBACK_DB_URL": cluster.create_database("feedback"),
            "MULTITAG_FEEDBACK_IMAGES_DIR": str(scratch / "data" / "replicas" / "images"),
        }
        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(running(command, scratch, scratch / f"replica{i}.log", env=env)) for i in range(2)]
            attacks: dict[str, Callable[[int], list[int | str]]] = {
                f"bit-depth bombs, {BOMB_CLIENTS} clients over 2 replicas": lambda n: [
                    status for url in urls for status in bomb_requests(url, n, grey16_bomb(), BOMB_CLIENTS // 2, args.bomb_requests)
                ],
                "/feedback flood, 1 client x 300 over 2 replicas": lambda n: [
                    status for i, url in enumerate(urls) for status in feedback_flood(url, n, label, 1, 150, 20_000 + i * 150)
                ],
            }
            rows = {}
            for number, (name, attack) in enumerate(attacks.items(), start=30):
                watches = [Watch(url, server_pid(url), int(args.rss_cap_gb * 2**30)) for url in urls]
                with watches[0].watching(), watches[1].watching():
                    rows[name] = watched_row(scratch / "data" / "replicas", name, partial(attack, number), watches)
            return rows
    finally:
        cluster.stop()
        shutil.rmtree(cluster_root, ignore_errors=True)


def watched_row(data_dir: Path, name: str, attack: Callable[[], list[int | str]], watches: list[Watch]) -> dict:
    """Run one attack while the caller's watches run: the answers by status, 5xx, the largest peak RSS,
    disk written, every /health failure."""
    before, started = folder_bytes(data_dir), time.monotonic()
    statuses = attack()
    counts = Counter(str(s) for s in statuses)
    row = {
        "requests": len(statuses),
        "answers": dict(sorted(counts.items())),
        "5xx": sum(n for s, n in counts.items() if s.isdigit() and int(s) >= 500),
        "peak_rss_gb": round(max(w.peak_rss for w in watches) / 2**30, 2),
        "disk_written_mb": round((folder_bytes(data_dir) - before) / 1e6, 1),
        "health_failures": sum(w.health_failures for w in watches),
        "killed_at_rss_cap": any(w.killed for w in watches),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"  {name:<42} {json.dumps(row)}", flush=True)
    return row


def print_table(results: dict[str, dict[str, dict]]) -> None:
    print(f"\n{'attack':<42} {'server':<9} {'sent':>5} {'5xx':>4} {'peak RSS':>9} {'disk MB':>8} {'/health':>8}  answers")
    for variant, rows in results.items():
        for name, row in rows.items():
            health = "ok" if not row["health_failures"] else f"{row['health_failures']} fail"
            rss = f"{row['peak_rss_gb']} GB" + ("!" if row["killed_at_rss_cap"] else "")
            print(
                f"{name:<42} {variant:<9} {row['requests']:>5} {row['5xx']:>4} {rss:>9} {row['disk_written_mb']:>8} {health:>8}  {row['answers']}"
            )
    if "project" in results:
        bombs = next(iter(results["project"].values()))
        verdict = "met" if bombs["peak_rss_gb"] < RSS_TARGET_GB else "MISSED"
        print(f"\ntarget: peak RSS under {RSS_TARGET_GB} GB with {BOMB_CLIENTS} bomb clients: {bombs['peak_rss_gb']} GB, {verdict}")
        if "baseline" in results:
            base = next(iter(results["baseline"].values()))
            print(
                f"baseline (bounds off) peak RSS under the same bombs: {base['peak_rss_gb']} GB"
                + (" (killed at the cap)" if base["killed_at_rss_cap"] else "")
            )
        print(f"5xx answers in all: {sum(row['5xx'] for row in results['project'].values())} (target 0)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["project", "baseline"], choices=["project", "baseline"])
    parser.add_argument("--bomb-requests", type=int, default=2, help="requests of 16 bombs per bomb client")
    parser.add_argument("--rss-cap-gb", type=float, default=10.0, help="kill a server whose RSS passes this")
    parser.add_argument("--fuzz", type=int, default=1200, help="schemathesis-generated requests (0: none)")
    parser.add_argument("--replicas", action="store_true", help="also two replicas on one PostgreSQL queue (needs initdb/pg_ctl)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not (JPEG_DIR.is_dir() and WEIGHTS.exists()):
        sys.exit(f"needs {JPEG_DIR} and {WEIGHTS} (the ../shared folder next to the repository)")
    from multitag.data.sources.voc import VOC_CLASSES
    from multitag.serving.app import PARAMS_ENV

    scratch = throwaway_workspace("multitag-bench-abuse-")
    print("registering a MobileNetV2 224 champion in a throwaway registry ...", flush=True)
    register_champion(scratch, build_model(), [p.read_bytes() for p in sorted(JPEG_DIR.glob("*.jpg"))[:16]])
    command = PROJECT_SERVER
    results: dict[str, dict[str, dict]] = {}
    for variant in args.variants:
        serve = {"trust_loopback": False, **(UNBOUNDED if variant == "baseline" else {})}
        params = write_params(scratch, variant, 16, **serve)
        print(f"{variant}: {serve}", flush=True)
        with running(command, scratch, scratch / f"{variant}.log", env={PARAMS_ENV: str(params)}) as url:
            results[variant] = attack_table(url, scratch / "data" / variant, VOC_CLASSES[0], args)
    if args.fuzz:  # the per-client rate limits off: else the fuzzer's one address is throttled before it reaches the code
        serve = {"trust_loopback": False, "client_requests_per_minute": 0, "client_upload_mb_per_hour": 0}
        params = write_params(scratch, "fuzz", 16, **serve)
        with running(command, scratch, scratch / "fuzz.log", env={PARAMS_ENV: str(params)}) as url:
            name = f"schemathesis, {args.fuzz} generated (rate limits off)"
            results.setdefault("project", {})[name] = measured(
                url, scratch / "data" / "fuzz", name, partial(fuzz, url, args.fuzz), args.rss_cap_gb
            )
    if args.replicas:
        print("two replicas on one PostgreSQL queue", flush=True)
        results["replicas"] = replicas_table(command, scratch, VOC_CLASSES[0], args)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "machine": machine_info()}, indent=1) + "\n")
    print(f"results written to {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
