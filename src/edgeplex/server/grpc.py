"""The KServe V2 gRPC transport: `inference.GRPCInferenceService` over grpc.aio.

A thin adapter over `Engine`, built on the stubs tritonclient ships, so tritonclient.grpc and
perf_analyzer work unmodified. Decoding and encoding are plain functions (`decode_request`,
`encode_response`) that can be tested without a socket; every `EdgeplexError` becomes a gRPC
status in one place (`_status`), and nothing a client sends can crash the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ..config import DEFAULT_MAX_BODY_BYTES, DEFAULT_OPEN_APIS
from ..engine import Engine, InferRequest, InferResponse
from ..errors import EdgeplexError, Forbidden, InvalidInput, StartupError
from ..tensors import (
    DEFAULT_MAX_ELEMENTS,
    V2_TO_NUMPY,
    check_shape,
    element_count,
    from_raw,
    raw_buffer,
    v2_datatype,
)
from . import triton
from .auth import ApiKeyInterceptor
from .grpc_wire import parse_infer_request, serialize_infer_response, serialize_stream_response
from .offload import OFFLOAD_JSON_BYTES, off_loop
from .ports import check_bindable
from .triton import REPOSITORY_API_OFF

log = logging.getLogger(__name__)

ModelInferRequest = service_pb2.ModelInferRequest
ModelInferResponse = service_pb2.ModelInferResponse

# Which field of InferTensorContents carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ALL_CONTENTS_FIELDS = frozenset(CONTENTS_FIELD.values())
# Requests of one stream computed at once; beyond it the stream stops reading (backpressure).
STREAM_WINDOW = 64


# -- decoding ------------------------------------------------------------------------------------
def decode_request(request: Any, max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    """A ModelInferRequest as an engine InferRequest; InvalidInput names the faulty input, and
    tensors of more than `max_elements` elements are refused (RESOURCE_EXHAUSTED)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} tensors but the request has {len(request.inputs)} "
            "inputs; send one raw tensor per input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input '{name}' is given more than once")
        if "shared_memory_region" in tensor.parameters:
            raise InvalidInput(f"input '{name}': shared-memory inputs are not supported")
        if tensor.datatype not in V2_TO_NUMPY:
            raise InvalidInput(
                f"input '{name}': unknown datatype '{tensor.datatype}' (expected one of {', '.join(V2_TO_NUMPY)})"
            )
        shape = check_shape(list(tensor.shape), name, max_elements)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{name}': data given both in contents and in raw_input_contents; use one"
                )
            inputs[name] = from_raw(raw[index], tensor.datatype, shape, name)
        else:
            inputs[name] = _from_contents(tensor.contents, tensor.datatype, shape, name)

    outputs: list[str] | None = None
    if request.outputs:
        outputs = []
        for out in request.outputs:
            if out.name in outputs:
                raise InvalidInput(f"output '{out.name}' is requested more than once")
            if "classification" in out.parameters or "shared_memory_region" in out.parameters:
                raise InvalidInput(f"output '{out.name}': classification and shared-memory outputs are not supported")
            outputs.append(out.name)

    params = request.parameters
    priority = _int_param(params, "priority")
    timeout_us = _int_param(params, "timeout")
    extra = {key: _param_value(value) for key, value in params.items() if key not in ("priority", "timeout")}
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=inputs,
        outputs=outputs,
        priority=priority or None,  # 0 = the model's default, as in Triton
        timeout_us=timeout_us or None,  # 0 = no timeout of the caller's own
        parameters=extra,
    )


def _from_contents(contents: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """Typed `contents` as numpy, with the element count checked against the shape."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    stray = [other for other in ALL_CONTENTS_FIELDS - {field} if len(getattr(contents, other))]
    if stray:
        raise InvalidInput(f"input '{name}': {datatype} data belongs in contents.{field}, got contents.{stray[0]}")
    values = list(getattr(contents, field))
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(f"input '{name}': got {len(values)} elements in {field}, shape {shape} needs {count}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = values
        return array.reshape(shape)
    try:
        return np.array(values, dtype=V2_TO_NUMPY[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input '{name}': a value does not fit {datatype}: {exc}") from None


def _int_param(params: Any, key: str) -> int | None:
    """An integer request parameter (int64 or uint64, as clients differ); None when absent."""
    if key not in params:
        return None
    value = _param_value(params[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def _param_value(param: Any) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


# -- encoding ------------------------------------------------------------------------------------
def encode_response(response: InferResponse, requested: list[str] | None = None) -> bytes:
    """An engine InferResponse as a serialized ModelInferResponse (raw_output_contents, as
    tritonclient reads them), each tensor copied once, straight into the reply."""
    names = requested or list(response.outputs)
    message = ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=response.id)
    raws: list[memoryview | bytes] = []
    for name in names:
        array = response.outputs[name]
        message.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape))
        raws.append(raw_buffer(array))
    for key, value in response.parameters.items():
        _set_param(message.parameters[key], value)
    return serialize_infer_response(message, raws)


def _set_param(param: Any, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


# -- errors --------------------------------------------------------------------------------------
def _status(exc: Exception, rpc: str) -> tuple[grpc.StatusCode, str]:
    """The one mapping from an exception to a gRPC status; unexpected ones are logged."""
    if isinstance(exc, EdgeplexError):
        return exc.grpc_code, exc.message
    log.error("gRPC %s: unexpected failure", rpc, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error in {rpc}: {type(exc).__name__}: {exc}"


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def _unary(handler: Handler) -> Handler:
    """Run a unary RPC, turning any exception into its gRPC status (never a dead server)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = _status(exc, handler.__name__)
        await context.abort(code, message)

    return wrapper  # type: ignore[return-value]


# -- the service ---------------------------------------------------------------------------------
class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """`inference.GRPCInferenceService` answered by an Engine; unlisted RPCs stay UNIMPLEMENTED."""

    def __init__(self, engine: Engine, repository_api: bool = False,
                 max_tensor_elements: int = DEFAULT_MAX_ELEMENTS, strict_readiness: bool = False) -> None:
        self.engine = engine
        self.repository_api = repository_api
        self.max_tensor_elements = max_tensor_elements
        self.strict_readiness = strict_readiness

    @_unary
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @_unary
    async def ServerReady(self, request: Any, context: Any) -> Any:
        # The message has no room for why; the log names the models (triton.server_readiness).
        ready = triton.server_readiness(self.engine, self.strict_readiness)["ready"]
        return service_pb2.ServerReadyResponse(ready=ready)

    @_unary
    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=self.engine.is_ready(request.name, request.version))

    @_unary
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(**triton.server_metadata())

    @_unary
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        document = self.engine.metadata(request.name, request.version)
        return json_format.ParseDict(document, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_unary
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        # The same dict the HTTP endpoint serves; fields the proto lacks are edgeplex's own.
        document = triton.model_config_document(self.engine, request.name, request.version)
        config = json_format.ParseDict(document, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=config)

    @_unary
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        document = {"model_stats": self.engine.statistics(request.name, request.version)}
        return json_format.ParseDict(document, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_unary
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        entries = triton.repository_index(self.engine, request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    @_unary
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        self._repository_api_allowed()
        overrides = [key for key in request.parameters if key == "config" or key.startswith("file:")]
        if overrides:
            raise InvalidInput(f"model '{request.model_name}': load parameter '{overrides[0]}' is not supported")
        await asyncio.to_thread(self.engine.load, request.model_name)  # opens sessions: blocks
        return service_pb2.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        self._repository_api_allowed()
        await asyncio.to_thread(self.engine.unload, request.model_name)  # drains the queue: blocks
        return service_pb2.RepositoryModelUnloadResponse()

    def _repository_api_allowed(self) -> None:
        if not self.repository_api:
            raise Forbidden(REPOSITORY_API_OFF)

    @_unary
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._infer(request)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Answer every request of the stream, in order; an error answers its own request only.

        Requests are read ahead and computed concurrently (up to STREAM_WINDOW), so a stream
        feeds the batcher as well as parallel unary calls do."""
        pending: asyncio.Queue[asyncio.Task[Any] | None] = asyncio.Queue(maxsize=STREAM_WINDOW)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(self._stream_one(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()
            while not pending.empty():
                if (task := pending.get_nowait()) is not None:
                    task.cancel()

    async def _stream_one(self, data: bytes) -> bytes:
        try:
            return serialize_stream_response(await self._infer(data))
        except Exception as exc:
            _, message = _status(exc, "ModelStreamInfer")
            # The id lets the client match the error to its request.
            try:
                request: Any = parse_infer_request(data)
                echo = ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
            except InvalidInput:
                echo = ModelInferResponse()
            return serialize_stream_response(echo.SerializeToString(), message)

    async def _infer(self, data: bytes) -> bytes:
        parsed = parse_infer_request(data)
        if len(data) >= OFFLOAD_JSON_BYTES and not parsed.raw_input_contents:  # typed contents: costly
            decoded = await off_loop(decode_request, parsed, self.max_tensor_elements)
        else:
            decoded = decode_request(parsed, self.max_tensor_elements)
        response = await self.engine.infer_async(decoded)
        return encode_response(response, decoded.outputs)


def _unimplemented(name: str) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by edgeplex")

    return refuse


def _register(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Add the service with protobuf (de)serialisation for every RPC except the two infer RPCs,
    which take and return bytes framed by `grpc_wire` (no copies of the raw tensors)."""
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if getattr(type(servicer), method.name) is getattr(service_pb2_grpc.GRPCInferenceServiceServicer, method.name):
            behaviour = _unimplemented(method.name)
        if method.name in ("ModelInfer", "ModelStreamInfer"):
            request_deserializer, response_serializer = None, None  # bytes in, bytes out
        else:
            request_deserializer = getattr(service_pb2, method.input_type.name).FromString
            response_serializer = getattr(service_pb2, method.output_type.name).SerializeToString
        make = grpc.stream_stream_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behaviour, request_deserializer=request_deserializer, response_serializer=response_serializer
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


async def start_grpc_server(
    engine: Engine, host: str, port: int, max_message_bytes: int = DEFAULT_MAX_BODY_BYTES, *,
    api_key: str | None = None, repository_api: bool = False, max_tensor_elements: int = DEFAULT_MAX_ELEMENTS,
    strict_readiness: bool = False, open_apis: Iterable[str] = DEFAULT_OPEN_APIS,
) -> tuple[grpc.aio.Server, int]:
    """Start serving `engine` on host:port (0 = a free port); returns the server and its port.
    With `api_key`, every call but those of the `open_apis` groups must carry it; `repository_api` allows model load/unload;
    `strict_readiness` makes ServerReady wait for every model asked to load (as Triton).
    A port that cannot be bound is a StartupError naming it, with nothing left running.
    Stopping it is the caller's: `await server.stop(grace)`."""
    check_bindable("gRPC", host, port)  # before gRPC's core, which would print its own error lines
    server = grpc.aio.server(
        interceptors=[ApiKeyInterceptor(api_key, open_apis)] if api_key else None,
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # A port already taken must fail, not be shared silently with another process.
            ("grpc.so_reuseport", 0),
        ]
    )
    _register(InferenceServicer(engine, repository_api, max_tensor_elements, strict_readiness), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)  # grpcio raises RuntimeError; older ones return 0
    except RuntimeError:
        bound = 0
    if bound == 0:  # taken between the check and the bind
        await server.stop(None)
        raise StartupError(f"gRPC port {port} on {host} cannot be bound (is it already in use?)")
    try:
        await server.start()
    except BaseException:
        await server.stop(None)
        raise
    log.info("gRPC server listening on %s", f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}")
    return server, bound
