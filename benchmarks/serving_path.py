"""Where a request's time goes on the serving path (issue 16, "measure first").

Three measurements of the same two models (an Identity on FP32 [1,16], and ppocr_cls with two
instances: `--policy config`, so the placement is fixed), each with its CPU:

1. engine: the in-process Engine driven by asyncio tasks in this process (no transport);
2. transport: edgeplex's gRPC servicer whose ModelInfer answers a reply prepared in advance
   (no engine), driven by Triton's perf_analyzer: the ceiling of the Python gRPC transport;
3. server: the real `edgeplex serve`, driven by perf_analyzer, with the CPU of its event-loop
   thread (the process's main thread) and of its executor threads (named after their model at
   the OS level) apart from the rest (gRPC's poller, the control path).

Usage: python benchmarks/serving_path.py [--rounds 2] [--measurement-ms 3000]
Prints a table; nothing is recorded (the figures go into benchmarks/README.md by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc

from edgeplex.bench.perf_analyzer import PerfAnalyzerError, ensure_perf_analyzer
from edgeplex.bench.process import running_server
from edgeplex.bench.serving import write_identity
from edgeplex.bench.triton_peer import free_port
from edgeplex.engine import Engine, InferRequest
from edgeplex.zoo import default_zoo_dir, pull

CASES = (("identity", 16), ("ppocr_cls", 4))
SHAPES = {"identity": {"INPUT0": [16]}}
INPUTS = {"identity": {"INPUT0": np.zeros((1, 16), np.float32)},
          "ppocr_cls": {"x": np.random.default_rng(0).random((1, 3, 48, 192), dtype=np.float32)}}


def repository(root: Path) -> Path:
    """identity and ppocr_cls, two instances each, fixed (`--policy config`)."""
    write_identity(root, {"instance_count": 2})
    shutil.copytree(pull(default_zoo_dir(), ["ppocr_cls"], progress=False) / "ppocr_cls", root / "ppocr_cls")
    with (root / "ppocr_cls" / "config.yaml").open("a") as config:
        config.write("instance_count: 2\n")
    return root


def engine_alone(repo: Path, model: str, concurrency: int, seconds: float) -> dict[str, float]:
    engine = Engine(repo, cores=2)
    engine.load_all([model])

    async def drive() -> int:
        count = 0
        stop = time.monotonic() + seconds

        async def client() -> None:
            nonlocal count
            while time.monotonic() < stop:
                await engine.infer_async(InferRequest(model_name=model, inputs=INPUTS[model]))
                count += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return count

    try:
        started, cpu = time.monotonic(), time.process_time()
        count = asyncio.run(drive())
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    finally:
        engine.close()
    return {"rate": count / elapsed, "cpu_ms": cpu / count * 1e3, "cores": cpu / elapsed}  # CPU of this process


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds of each thread of `pid`, by (thread id, OS name: executors carry their model's)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[tuple[int, str], float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        seconds[(int(tid), name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def answered(grpc_url: str, model: str) -> int:
    """Requests the server has answered for `model`, by its own statistics (perf_analyzer's
    request count covers only the windows it kept, not its whole run)."""
    client = tritonclient.grpc.InferenceServerClient(grpc_url)
    try:
        return sum(int(stats.inference_count) for stats in client.get_inference_statistics(model).model_stats)
    finally:
        client.close()


def perf(pid: int, model: str, grpc_url: str, concurrency: int, measurement_ms: int) -> dict[str, float]:
    """perf_analyzer against a server process; its CPU per request answered over the whole run,
    loop thread and executors apart (threads that end during the run are not counted)."""
    analyzer = ensure_perf_analyzer()
    count = answered(grpc_url, model)
    before, started = thread_cpu(pid), time.monotonic()
    result = analyzer.run(model, grpc_url, "grpc", concurrency, measurement_ms, shape=SHAPES.get(model),
                          stability_percentage=30, max_trials=5)
    after, elapsed = thread_cpu(pid), time.monotonic() - started
    requests = max(answered(grpc_url, model) - count, 1)
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    loop = sum(cpu for (tid, _), cpu in used.items() if tid == pid)
    executors = sum(cpu for (_, name), cpu in used.items() if name.startswith(f"{model}-"))
    return {"rate": result.throughput, "p50_ms": result.p50_ms, "cpu_ms": sum(used.values()) / requests * 1e3,
            "loop_ms": loop / requests * 1e3, "executor_ms": executors / requests * 1e3,
            "cores": sum(used.values()) / elapsed}


TRANSPORT_ONLY = """
import asyncio, sys
from pathlib import Path
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from edgeplex.engine import Engine, InferRequest
from edgeplex.server import grpc as g

engine = Engine(Path(sys.argv[1]), cores=2)
engine.load_all([sys.argv[3]])
reply = g.encode_response(engine.infer(InferRequest(model_name=sys.argv[3], inputs={INPUTS})))
count = [0]

async def answer(self, data):  # the reply prepared in advance: no decoding, no engine
    count[0] += 1
    return reply

async def statistics(self, request, context):  # perf_analyzer checks the count moves
    n = {"count": str(count[0]), "ns": "1"}
    stats = {"name": request.name, "version": "1", "inference_count": str(count[0]),
             "execution_count": str(count[0]), "inference_stats": {k: n for k in
             ("success", "queue", "compute_input", "compute_infer", "compute_output")}}
    return json_format.ParseDict({"model_stats": [stats]}, service_pb2.ModelStatisticsResponse())

g.InferenceServicer._infer = answer
g.InferenceServicer.ModelStatistics = statistics

async def main():
    server, _ = await g.start_grpc_server(engine, "127.0.0.1", int(sys.argv[2]))
    print("listening", flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def transport_alone(repo: Path, model: str, concurrency: int, measurement_ms: int) -> dict[str, float]:
    port = free_port()
    inputs = {"identity": '{"INPUT0": np.zeros((1, 16), np.float32)}',
              "ppocr_cls": '{"x": np.zeros((1, 3, 48, 192), np.float32)}'}[model]
    script = TRANSPORT_ONLY.replace("{INPUTS}", inputs)
    process = subprocess.Popen([sys.executable, "-c", script, str(repo), str(port), model],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "listening"
        return perf(process.pid, model, f"127.0.0.1:{port}", concurrency, measurement_ms)
    finally:
        process.kill()
        process.wait()


def server(repo: Path, model: str, concurrency: int, measurement_ms: int) -> dict[str, float]:
    with running_server(repo, "--policy", "config", "--model", model, cores=2) as serving:
        return perf(serving.process.pid, model, serving.grpc_url, concurrency, measurement_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each in-process engine run")
    args = parser.parse_args()
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="edgeplex-serving-path-") as scratch:
        repo = repository(Path(scratch))
        for _ in range(args.rounds):
            for model, concurrency in CASES:
                case = f"{model} c{concurrency}"
                rows.append((case, "engine", engine_alone(repo, model, concurrency, args.seconds)))
                for name, measure in (("transport", transport_alone), ("server", server)):
                    try:
                        rows.append((case, name, measure(repo, model, concurrency, args.measurement_ms)))
                    except PerfAnalyzerError as exc:
                        rows.append((case, name, {"error": str(exc).splitlines()[0]}))
    print(f"{'case':<14} {'path':<10} {'req/s':>8} {'p50 ms':>7} {'CPU ms/req':>10} {'loop ms/req':>11} "
          f"{'executors':>9} {'cores':>6}")
    for case, name, row in rows:
        if "error" in row:
            print(f"{case:<14} {name:<10} {row['error']}")
            continue
        print(f"{case:<14} {name:<10} {row['rate']:8.0f} {row.get('p50_ms', float('nan')):7.1f} "
              f"{row['cpu_ms']:10.3f} {row.get('loop_ms', float('nan')):11.3f} "
              f"{row.get('executor_ms', float('nan')):9.3f} {row['cores']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
