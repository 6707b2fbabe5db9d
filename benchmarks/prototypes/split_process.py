"""Prototype, kept to reproduce a measurement (benchmarks/README.md, "Serving path, measured
first"): the gRPC frontend in one process and the engine in another, over ZeroMQ ipc with
tensors as zero-copy frames, blocking sockets on threads of their own. Not part of edgeplex: on
2 cores it lost to the in-process server (ppocr_cls c4 401-422 vs 441-444 infer/s, 3.7 vs
3.2 ms CPU per request). Worth re-measuring on a box with more cores.

Needs `pip install pyzmq` (not a dependency). Run, with REPO a repository holding `identity`
and `ppocr_cls` (benchmarks/serving_path.py's `repository()` makes one):

    python benchmarks/prototypes/split_process.py engine 0 REPO &
    python benchmarks/prototypes/split_process.py front 18211 REPO &
    perf_analyzer -m ppocr_cls -u 127.0.0.1:18211 -i grpc --concurrency-range 4

ModelStatistics answers a plain counter (perf_analyzer checks it moves); metadata and config
come from an Engine of the frontend's own, loaded only for that.
"""
# ruff: noqa
# mypy: ignore-errors
import asyncio, pickle, sys, os, itertools, threading, collections, numpy as np
from pathlib import Path
import zmq
REQ = "ipc:///tmp/edgeplex-split-req.sock"; REP = "ipc:///tmp/edgeplex-split-rep.sock"
REPO = Path(sys.argv[3])

def engine_main():
    from edgeplex.engine import Engine, InferRequest
    engine = Engine(REPO, cores=2)
    engine.load_all(["identity", "ppocr_cls"])
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL); pull.bind(REQ)
    push = ctx.socket(zmq.PUSH); push.bind(REP)
    lock = threading.Lock()
    def reply(token, fut):
        try:
            r = fut.result()
            outs = [(n, a.dtype.str, a.shape) for n, a in r.outputs.items()]
            frames = [token, pickle.dumps((True, r.model_name, r.model_version, r.id, outs))] + [np.ascontiguousarray(a) for a in r.outputs.values()]
        except Exception as exc:
            frames = [token, pickle.dumps((False, type(exc).__name__, str(exc)))]
        with lock:
            push.send_multipart(frames, copy=False)
    print("engine ready", flush=True)
    while True:
        msg = pull.recv_multipart(copy=False)
        token = msg[0].bytes
        model, version, rid, outputs, prio, timeout, params, specs = pickle.loads(msg[1].buffer)
        inputs = {n: np.frombuffer(f.buffer, dtype=dt).reshape(shape) for (n, dt, shape), f in zip(specs, msg[2:])}
        try:
            fut = engine.submit_nowait(InferRequest(model_name=model, inputs=inputs, model_version=version, id=rid, outputs=outputs, priority=prio, timeout_us=timeout, parameters=params))
        except Exception as exc:
            with lock:
                push.send_multipart([token, pickle.dumps((False, type(exc).__name__, str(exc)))])
            continue
        fut.add_done_callback(lambda f, t=token: reply(t, f))

def frontend_main(port):
    from edgeplex.engine import Engine, InferResponse
    from edgeplex.server import grpc as g
    engine = Engine(REPO, cores=2); engine.load_all(["identity", "ppocr_cls"])  # metadata only
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH); push.connect(REQ)
    pending = {}
    counter = itertools.count()
    N = [0]
    state = {}
    ready = collections.deque(); scheduled = [False]; lk = threading.Lock()
    def drain():
        with lk:
            items = list(ready); ready.clear(); scheduled[0] = False
        for token, head, frames in items:
            fut = pending.pop(token, None)
            if fut is None or fut.done(): continue
            if head[0]:
                _, model, version, rid, outs = head
                outputs = {n: np.frombuffer(f.buffer, dtype=dt).reshape(shape) for (n, dt, shape), f in zip(outs, frames)}
                fut.set_result(InferResponse(model_name=model, model_version=version, outputs=outputs, id=rid))
            else:
                fut.set_exception(RuntimeError(head[2]))
    def receiver(loop):
        pull = ctx.socket(zmq.PULL); pull.connect(REP)
        while True:
            msg = pull.recv_multipart(copy=False)
            item = (msg[0].bytes, pickle.loads(msg[1].buffer), msg[2:])
            with lk:
                ready.append(item)
                if scheduled[0]: continue
                scheduled[0] = True
            loop.call_soon_threadsafe(drain)
    async def infer(self, data):
        N[0] += 1
        req = g.decode_request(g.parse_infer_request(data), self.max_tensor_elements)
        token = next(counter).to_bytes(8, "little")
        fut = asyncio.get_running_loop().create_future(); pending[token] = fut
        head = (req.model_name, req.model_version, req.id, req.outputs, req.priority, req.timeout_us, req.parameters,
                [(n, a.dtype.str, a.shape) for n, a in req.inputs.items()])
        push.send_multipart([token, pickle.dumps(head)] + list(req.inputs.values()), copy=False)
        response = await fut
        return g.encode_response(response, req.outputs)
    g.InferenceServicer._infer = infer
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2
    async def stats(self, request, context):
        n = str(N[0]); c = {"count": n, "ns": "1"}
        d = {"model_stats": [{"name": request.name, "version": "1", "inference_count": n, "execution_count": n,
             "inference_stats": {k: c for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")}}]}
        return json_format.ParseDict(d, service_pb2.ModelStatisticsResponse())
    g.InferenceServicer.ModelStatistics = stats
    async def main():
        threading.Thread(target=receiver, args=(asyncio.get_running_loop(),), daemon=True).start()
        s, _ = await g.start_grpc_server(engine, "127.0.0.1", port)
        print("listening", flush=True)
        await s.wait_for_termination()
    asyncio.run(main())

if sys.argv[1] == "engine": engine_main()
else: frontend_main(int(sys.argv[2]))
