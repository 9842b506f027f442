"""ONNX Runtime backend for the built-in image model: export, cache, providers, and the backend.

The runtime's sampler loop is shared; this backend only answers "denoise this batch" (and, through
`encode_text`, "encode these tokens") with ONNX Runtime sessions instead of eager PyTorch.

Export. Both nets go through `torch.onnx.export` with the TorchScript exporter (`dynamo=False`),
opset 17, constant folding, and the batch axis dynamic; `EXPORT_SETTINGS` pins this, and every
setting in it is part of the cache key. Why the TorchScript exporter and not the torch.export-based
default of torch ≥ 2.9:

- it needs no `onnxscript` (not a dlab dependency); the dynamo exporter imports it;
- it has exported every op of these nets for years, including `scaled_dot_product_attention`
  with a boolean key mask (opset ≥ 14: MatMul, Where(mask, 0, -inf), Softmax, and an
  IsNaN guard for fully masked rows); the parity tests run the exported graphs against eager
  PyTorch at two batch sizes (one different from the traced batch), so a wrongly traced mask or
  batch axis fails them;
- its output is a plain opset-17 graph that the fp16 pass below can rewrite node by node.

It is deprecated upstream: the export prints DeprecationWarnings and tracer warnings (for shape
checks that are constant at a fixed sequence length), which `_quiet_export` hides. If a future torch
drops it, the export fails with one `DlabError` line; the key carries the torch version, so a
newer torch never reuses an older export by mistake.

Cache. Exports live in `<cache root>/onnx/<key>/` (cache root: `platformdirs.user_cache_dir("dlab")`,
or `cache_root=`), with key = sha256 of (the weights file's sha256, `EXPORT_SETTINGS`, torch
version, dtype, `EXPORT_FORMAT_VERSION`, and for fp16 the ops kept in fp32). An entry is written into
a temporary directory and renamed into place, so a crash never leaves a half entry under its key;
`export.json` inside records each file's sha256, and an entry whose files are missing or do not match
(truncated, edited) is exported again. The key is the weights *file* hash: it assumes `model.unet`
and `model.text_encoder` still hold what `ImageModel.load` read.

Precision. The CPU provider runs the fp32 graph. For GPU providers, `precision="fp16"` uses a U-Net
graph converted by `convert_to_fp16`: weights and activations fp16, but GroupNorm (exported as
InstanceNormalization), LayerNorm and Softmax compute in fp32, and so does the timestep path
(t → sinusoidal embedding → time MLP: fp16 cannot hold t·freq to better than ±0.25 rad at t ≈ 999).
Inputs and outputs stay fp32. The text encoder is tiny next to the U-Net and stays fp32.

Providers. `choose_providers` orders TensorRT, CUDA, CPU; with a `HardwareSnapshot` a GPU provider
is tried only if the doctor's provider checks created a session on it (they check CUDA, not
TensorRT, so TensorRT is tried only without a snapshot). `OrtBackend` creates each session on one
provider at a time and keeps it only if `session.get_providers()` puts that provider first: ORT
itself silently runs on the CPU when a GPU provider's libraries are missing. A provider that fails
is skipped with a one-line `ProviderFallbackWarning` carrying ORT's reason.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dlab.errors import BadInput, DlabError
from dlab.runtime.backends import PRECISIONS, Backend, EagerBackend

if TYPE_CHECKING:
    from dlab.planner.snapshot import HardwareSnapshot
    from dlab.runtime.image import ImageModel

# Bump when what is written into a cache entry changes (graph I/O, file names, the fp16 pass).
EXPORT_FORMAT_VERSION = 1

# How `torch.onnx.export` is called for both nets (see the module docstring). `dynamic_axes` is the
# axis map applied to every input and output: only the batch varies (prompts are padded to the
# tokenizer's max_len, and the image size is fixed by the model).
EXPORT_SETTINGS: dict[str, Any] = {
    "dynamo": False,
    "opset_version": 17,
    "do_constant_folding": True,
    "dynamic_axes": {0: "batch"},
}

# Ops that compute in fp32 inside an fp16 graph (their inputs are cast up and their outputs down).
FP16_KEEP_FP32_OPS: tuple[str, ...] = ("GroupNormalization", "InstanceNormalization", "LayerNormalization", "Softmax")

UNET_FILE, TEXT_FILE, MANIFEST_FILE = "unet.onnx", "text_encoder.onnx", "export.json"
UNET_INPUTS, UNET_OUTPUTS = ("x", "t", "context", "context_mask"), ("out",)
TEXT_INPUTS, TEXT_OUTPUTS = ("ids", "mask"), ("emb", "emb_mask")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TRT_PROVIDER = "TensorrtExecutionProvider"
PROVIDER_ORDER: tuple[str, ...] = (TRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)
GPU_PROVIDERS = frozenset({TRT_PROVIDER, CUDA_PROVIDER})

# `torch.onnx.export` calls this process has made, two per cache entry (the tests read it: a cache
# hit does not move it).
EXPORT_COUNT = 0


class ProviderFallbackWarning(RuntimeWarning):
    """An execution provider could not run here and the backend moved on to the next one."""


# ------------------------------------------------------------------------------------------ export
@contextlib.contextmanager
def _quiet_export():
    """Hide the exporter's DeprecationWarnings ("legacy TorchScript-based ONNX export", "The feature
    will be removed") and its TracerWarnings; nothing a user of dlab can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx\..*", category=DeprecationWarning)
        yield


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names: Sequence[str],
                output_names: Sequence[str]) -> None:
    """The one `torch.onnx.export` call, with `EXPORT_SETTINGS`."""
    global EXPORT_COUNT
    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes the graph with it
        raise DlabError("the onnx backend needs the `onnx` package to export the model: pip install onnx")
    settings = dict(EXPORT_SETTINGS)
    axes = settings.pop("dynamic_axes")
    try:
        with _quiet_export(), torch.no_grad():
            torch.onnx.export(
                module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={name: dict(axes) for name in (*input_names, *output_names)}, **settings,
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DlabError(f"ONNX export of {type(module).__name__} failed with torch {torch.__version__}: {first}") from e
    EXPORT_COUNT += 1


def _example_inputs(model: ImageModel, text: torch.nn.Module) -> tuple[tuple, tuple]:
    """Trace inputs: two prompts (one empty, so the mask has padding), batch 2."""
    enc = model.tokenizer.encode(["a red circle on a black background", ""])
    with torch.no_grad():
        emb, mask = text(enc.ids, enc.mask)
    g = torch.Generator().manual_seed(0)
    channels = int(model.config.get("unet", {}).get("in_channels", 3))
    x = torch.randn(2, channels, model.image_size, model.image_size, generator=g)
    t = torch.tensor([999.0, 1.0])
    return (enc.ids, enc.mask), (x, t, emb.float(), mask)


def export_key(weights_sha256: str, dtype: str) -> str:
    parts = {
        "weights": weights_sha256,
        "export": EXPORT_SETTINGS,
        "torch": torch.__version__,
        "dtype": dtype,
        "format": EXPORT_FORMAT_VERSION,
    }
    if dtype == "fp16":
        parts["fp32_ops"] = list(FP16_KEEP_FP32_OPS)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def onnx_cache_dir(cache_root: Path | str | None = None) -> Path:
    if cache_root is None:
        from dlab.planner.probe import cache_dir

        cache_root = cache_dir()
    return Path(cache_root) / "onnx"


@dataclass(frozen=True)
class OnnxExport:
    """One cache entry: the exported graphs of one model at one dtype."""

    dir: Path
    key: str
    dtype: str  # "fp32" or "fp16" (of the U-Net; the text encoder is always fp32)
    exported: bool  # True when this call exported it, False on a cache hit
    seconds: float  # how long the export took (when it was made)

    @property
    def unet(self) -> Path:
        return self.dir / UNET_FILE

    @property
    def text_encoder(self) -> Path:
        return self.dir / TEXT_FILE


def _file_sha256(path: Path) -> str:
    from dlab.runtime.image import file_sha256

    return file_sha256(path)


def _valid_entry(entry: Path, key: str) -> dict | None:
    """The manifest of a complete, unmodified entry; None for anything else."""
    try:
        manifest = json.loads((entry / MANIFEST_FILE).read_text())
        if manifest.get("key") != key or manifest.get("format") != EXPORT_FORMAT_VERSION:
            return None
        files = manifest["files"]
        if set(files) != {UNET_FILE, TEXT_FILE}:
            return None
        for name, digest in files.items():
            if _file_sha256(entry / name) != digest:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_entry(model: ImageModel, dtype: str, key: str, tmp: Path) -> float:
    t0 = time.perf_counter()
    unet = copy.deepcopy(model.unet).to("cpu").float().eval()
    text = copy.deepcopy(model.text_encoder).to("cpu").float().eval()
    text_args, unet_args = _example_inputs(model, text)
    export_onnx(text, text_args, tmp / TEXT_FILE, TEXT_INPUTS, TEXT_OUTPUTS)
    export_onnx(unet, unet_args, tmp / UNET_FILE, UNET_INPUTS, UNET_OUTPUTS)
    if dtype == "fp16":
        import onnx

        onnx.save(convert_to_fp16(onnx.load(str(tmp / UNET_FILE))), str(tmp / UNET_FILE))
    seconds = time.perf_counter() - t0
    manifest = {
        "format": EXPORT_FORMAT_VERSION,
        "key": key,
        "weights_sha256": model.sha256,
        "dtype": dtype,
        "torch": torch.__version__,
        "settings": EXPORT_SETTINGS,
        "fp32_ops": list(FP16_KEEP_FP32_OPS) if dtype == "fp16" else [],
        "seconds": round(seconds, 3),
        "files": {name: _file_sha256(tmp / name) for name in (UNET_FILE, TEXT_FILE)},
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return seconds


def ensure_export(model: ImageModel, dtype: str = "fp32", cache_root: Path | str | None = None) -> OnnxExport:
    """The cached export of `model` at `dtype`, exporting (atomically) when it is missing or damaged."""
    if dtype not in ("fp32", "fp16"):
        raise BadInput(f"ONNX export dtype {dtype!r}: choose fp32 or fp16")
    key = export_key(model.sha256, dtype)
    root = onnx_cache_dir(cache_root)
    entry = root / key
    manifest = _valid_entry(entry, key)
    if manifest is not None:
        return OnnxExport(entry, key, dtype, exported=False, seconds=float(manifest.get("seconds", 0.0)))

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    try:
        seconds = _write_entry(model, dtype, key, tmp)
        if entry.exists():  # damaged (or a concurrent writer's, checked again): move it aside first
            if _valid_entry(entry, key) is not None:
                return OnnxExport(entry, key, dtype, exported=False, seconds=seconds)
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{key[:16]}-", dir=root))
            with contextlib.suppress(OSError):
                os.replace(entry, trash / "entry")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process renamed its copy in first
            if _valid_entry(entry, key) is None:
                raise
            return OnnxExport(entry, key, dtype, exported=False, seconds=seconds)
        return OnnxExport(entry, key, dtype, exported=True, seconds=seconds)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------- fp16
_FLOAT, _HALF = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16
_ANY_TYPE_INPUTS = frozenset({"Shape", "Size", "Cast"})  # ops whose inputs may be any type
_HALF_MAX = 65504.0
# Ops whose output type comes from a `dtype` attribute; none is in these nets, and the pass refuses them.
_DTYPE_ATTRIBUTE_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                                  "Bernoulli", "Multinomial"})


def _to_half(array: np.ndarray) -> np.ndarray:
    """float32 → float16 keeping finite values finite (clamped to ±65504); ±inf and NaN stay."""
    finite = np.isfinite(array)
    return np.where(finite, np.clip(array, -_HALF_MAX, _HALF_MAX), array).astype(np.float16)


def convert_to_fp16(model: Any, fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
                    fp32_inputs: Sequence[str] = ("t",)) -> Any:
    """An fp16 copy of an fp32 ONNX graph, with fp32 graph inputs and outputs.

    Nodes whose op is in `fp32_ops`, and nodes that depend only on the graph inputs in
    `fp32_inputs` (the timestep path), compute in fp32; everything else in fp16. A Cast is inserted on
    each edge where the two sides differ. Constants and initializers take the precision of their
    consumers (both, as two tensors, when consumers differ), so e.g. LayerNorm weights stay fp32.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    elem: dict[str, int] = {}
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        elem[vi.name] = vi.type.tensor_type.elem_type
    initializers = {t.name: t for t in g.initializer}
    for t in g.initializer:
        elem[t.name] = t.data_type

    # Identity(constant) only aliases a deduplicated weight: point its consumers at the source.
    alias: dict[str, str] = {}
    graph_outputs = {o.name for o in g.output}
    constant_outputs = set(initializers) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    nodes = []
    for n in g.node:
        inputs = [alias.get(i, i) for i in n.input]
        if n.op_type == "Identity" and inputs[0] in constant_outputs and n.output[0] not in graph_outputs:
            alias[n.output[0]] = inputs[0]
            continue
        del n.input[:]
        n.input.extend(inputs)
        nodes.append(n)

    # Which graph inputs each tensor depends on, and so each node's precision.
    depends: dict[str, frozenset[str]] = {i.name: frozenset({i.name}) for i in g.input}
    keep_fp32_inputs = frozenset(fp32_inputs)
    precision: dict[int, int] = {}
    for idx, n in enumerate(nodes):
        d = frozenset().union(*(depends.get(i, frozenset()) for i in n.input if i))
        for o in n.output:
            depends[o] = d
        pinned = n.op_type in fp32_ops or (d and d <= keep_fp32_inputs)
        precision[idx] = _FLOAT if pinned else _HALF

    def is_float(name: str) -> bool:
        return bool(name) and elem.get(name) == _FLOAT

    # Constants (Constant nodes, initializers) serve the precisions their consumers need.
    wanted: dict[str, set[int]] = {}
    for idx, n in enumerate(nodes):
        if n.op_type in _ANY_TYPE_INPUTS or n.op_type == "Constant":
            continue
        for i in n.input:
            if is_float(i) and i in constant_outputs:
                wanted.setdefault(i, set()).add(precision[idx])

    out_nodes: list[Any] = []
    dtype: dict[str, int] = {i.name: _FLOAT for i in g.input if is_float(i.name)}  # current tensor types
    half_copy: dict[str, str] = {}  # fp32 constant → its fp16 twin
    new_initializers = []
    for t in g.initializer:
        need = wanted.get(t.name, set())
        if t.data_type != _FLOAT or not need:
            new_initializers.append(t)
            dtype[t.name] = t.data_type
            continue
        half = numpy_helper.from_array(_to_half(numpy_helper.to_array(t)), t.name)
        if need == {_HALF}:
            new_initializers.append(half)
            dtype[t.name] = _HALF
        else:
            new_initializers.append(t)
            dtype[t.name] = _FLOAT
            if _HALF in need:
                half.name = half_copy[t.name] = f"{t.name}__fp16"
                new_initializers.append(half)
                dtype[half.name] = _HALF

    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        if dtype.get(name) == to:
            return name
        if to == _HALF and name in half_copy:
            return half_copy[name]
        if (name, to) not in casts:
            out = f"{name}__{'fp16' if to == _HALF else 'fp32'}"
            out_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            casts[(name, to)] = out
            dtype[out] = to
        return casts[(name, to)]

    for idx, n in enumerate(nodes):
        p = precision[idx]
        if n.op_type == "Constant":
            out = n.output[0]
            need = wanted.get(out, set())
            value = next((a for a in n.attribute if a.name == "value"), None)
            if value is None or value.t.data_type != _FLOAT or not need:
                out_nodes.append(n)
                dtype[out] = elem.get(out, 0)
                continue
            half = numpy_helper.from_array(_to_half(numpy_helper.to_array(value.t)))
            if need == {_HALF}:
                value.t.CopyFrom(half)
                dtype[out] = _HALF
                out_nodes.append(n)
            else:
                out_nodes.append(n)
                dtype[out] = _FLOAT
                if _HALF in need:
                    half_copy[out] = f"{out}__fp16"
                    out_nodes.append(helper.make_node("Constant", [], [half_copy[out]], value=half,
                                                      name=f"{n.name}__fp16"))
                    dtype[half_copy[out]] = _HALF
            continue
        if n.op_type not in _ANY_TYPE_INPUTS:
            for k, i in enumerate(n.input):
                if is_float(i):
                    n.input[k] = cast(i, p)
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == _FLOAT:
                a.i = p
            elif n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == _FLOAT and p == _HALF:
                a.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(a.t))))
        if n.op_type in _DTYPE_ATTRIBUTE_OPS:
            raise NotImplementedError(f"convert_to_fp16: {n.op_type} is not handled")
        renamed = []
        for k, o in enumerate(n.output):
            if elem.get(o) == _FLOAT:
                if o in graph_outputs and p == _HALF:
                    n.output[k] = f"{o}__fp16"
                    renamed.append(o)
                dtype[n.output[k]] = p
            else:
                dtype[o] = elem.get(o, 0)
        out_nodes.append(n)
        for o in renamed:
            out_nodes.append(helper.make_node("Cast", [f"{o}__fp16"], [o], to=_FLOAT, name=f"{o}__cast"))
            dtype[o] = _FLOAT

    del g.node[:]
    g.node.extend(out_nodes)
    del g.initializer[:]
    g.initializer.extend(new_initializers)
    del g.value_info[:]
    for o in g.output:
        if o.name in alias:
            raise NotImplementedError("convert_to_fp16: a graph output aliases a constant")
    onnx.checker.check_model(model, full_check=True)  # strict type inference: every edge's types agree
    return model


# ---------------------------------------------------------------------------------------- providers
def choose_providers(snapshot: HardwareSnapshot | None, available: Sequence[str]) -> list[str]:
    """Execution providers to try, best first, from TensorRT / CUDA / CPU.

    A provider must be in `available` (what this ORT build lists). With a snapshot, a GPU provider is
    kept only if the snapshot's provider checks proved it works (a session was created on it), since
    ORT lists GPU providers whose libraries are missing. Without one, every listed provider is tried
    and the backend falls back, with a warning, from those that fail. The CPU provider is always last.
    """
    checks = {c.provider: c for c in snapshot.software.onnxruntime.provider_checks} if snapshot else {}
    chosen = []
    for p in PROVIDER_ORDER:
        if p == CPU_PROVIDER:
            continue
        if p not in available:
            continue
        if snapshot is not None and not (p in checks and checks[p].works):
            continue
        chosen.append(p)
    return [*chosen, CPU_PROVIDER]


def _excluded_reason(snapshot: HardwareSnapshot | None, provider: str, available: Sequence[str]) -> str:
    if provider not in available:
        return "not in this onnxruntime build"
    check = snapshot.software.onnxruntime.check(provider) if snapshot else None
    if check is None:
        return "not proven to work by the snapshot's provider checks"
    return check.detail or "its provider check failed"


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads() or os.cpu_count() or 1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors: the reason a provider's libraries failed to load is one
    return options


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def create_session(path: Path, provider: str, options: Any, provider_options: dict | None = None) -> tuple[Any, str]:
    """(session, "") with `provider` really active first, or (None, the one-line reason it is not).

    ORT silently falls back to the CPU when a GPU provider's libraries are missing (logging why to
    fd 2, and for TensorRT printing an "EP Error" banner to stdout); both are captured for the reason.
    """
    import onnxruntime as ort

    from dlab.planner.probe import _captured_stderr_fd, _ort_failure_reason

    providers: list[Any] = [(provider, provider_options) if provider_options else provider]
    if provider != CPU_PROVIDER:
        providers.append(CPU_PROVIDER)
    stdout = io.StringIO()
    with _captured_stderr_fd() as read_log, contextlib.redirect_stdout(stdout):
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            error = None
        except Exception as e:
            session, error = None, f"{type(e).__name__}: {e}"
        log = read_log()
    if session is not None and session.get_providers()[:1] == [provider]:
        return session, ""
    if error:
        return None, _one_line(error)
    reason = _ort_failure_reason(log + "\n" + stdout.getvalue()) if (log.strip() or stdout.getvalue().strip()) else ""
    banner = re.search(r"(Please install [^\n]*?)(?: as mentioned|\n|$)", stdout.getvalue())
    if banner and banner.group(1) not in reason:
        reason = f"{reason}; {banner.group(1)}" if reason else banner.group(1)
    return None, _one_line(reason or f"onnxruntime placed the session on {session.get_providers()[:1]}")


# ------------------------------------------------------------------------------------------ backend
class OrtBackend:
    """The image model's U-Net and text encoder run by ONNX Runtime.

    `providers` are tried in order; the first that really creates sessions is used (`provider`),
    with a `ProviderFallbackWarning` naming the reason for each one skipped. GPU providers run the
    `precision` graph, the CPU provider always the fp32 one.
    """

    name = "onnxruntime"

    def __init__(self, model: ImageModel, providers: Sequence[str] = (CPU_PROVIDER,), precision: str = "fp32",
                 cache_root: Path | str | None = None, threads: int | None = None, device_id: int = 0):
        if precision not in ("fp32", "fp16"):
            raise BadInput(f"the onnx backend runs fp32 or fp16, not {precision!r}")
        providers = list(dict.fromkeys(providers)) or [CPU_PROVIDER]
        options = session_options(threads)
        exports: dict[str, OnnxExport] = {}
        skipped: list[str] = []
        for k, provider in enumerate(providers):
            dtype = precision if provider in GPU_PROVIDERS else "fp32"
            if dtype not in exports:
                exports[dtype] = ensure_export(model, dtype, cache_root)
            export = exports[dtype]
            popts = self._provider_options(provider, dtype, export, device_id)
            unet, reason = create_session(export.unet, provider, options, popts)
            text = None
            if unet is not None:
                text, reason = create_session(export.text_encoder, provider, options, popts)
            if unet is None or text is None:
                nxt = providers[k + 1] if k + 1 < len(providers) else None
                skipped.append(provider)
                warnings.warn(
                    f"onnxruntime: {provider} cannot run here ({reason})"
                    + (f"; falling back to {nxt}" if nxt else ""),
                    ProviderFallbackWarning, stacklevel=2,
                )
                continue
            break
        else:
            raise DlabError(f"onnxruntime: no execution provider could run the model (tried {', '.join(providers)})")
        if dtype != precision:
            warnings.warn(f"onnxruntime: {provider} runs the fp32 graph, not {precision}", ProviderFallbackWarning,
                          stacklevel=2)
        self.unet_session, self.text_session = unet, text
        self.provider: str = provider
        self.device: str = "cuda" if provider in GPU_PROVIDERS else "cpu"
        self.precision: str = dtype
        self.export: OnnxExport = export
        self.skipped: list[str] = skipped
        self.calls = 0

    @staticmethod
    def _provider_options(provider: str, dtype: str, export: OnnxExport, device_id: int) -> dict | None:
        if provider == CUDA_PROVIDER:
            return {"device_id": device_id}
        if provider == TRT_PROVIDER:
            return {
                "device_id": device_id,
                "trt_fp16_enable": dtype == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(export.dir / "trt"),
            }
        return None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        emb, mask = context
        self.calls += 1
        feeds = {
            "x": _np(x, np.float32),
            "t": _np(t, np.float32),
            "context": _np(emb, np.float32),
            "context_mask": _np(mask, np.bool_),
        }
        (out,) = self.unet_session.run(None, feeds)
        return torch.from_numpy(out).to(x.device)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder through ORT: (B, L) ids and mask → ((B, L+1, D) float32, (B, L+1) bool)."""
        emb, emb_mask = self.text_session.run(None, {"ids": _np(ids, np.int64), "mask": _np(mask, np.bool_)})
        return torch.from_numpy(emb), torch.from_numpy(emb_mask)


def _np(tensor: torch.Tensor, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)


# ------------------------------------------------------------------------------------------ factory
BACKEND_KINDS = ("eager", "onnx")


def make_backend(model: ImageModel, kind: str = "eager", device: str = "cpu", precision: str = "fp32",
                 snapshot: HardwareSnapshot | None = None, cache_root: Path | str | None = None) -> Backend:
    """The backend that runs `model`: "eager" → `EagerBackend`, "onnx" → `OrtBackend`.

    Combinations that cannot run are one-line `BadInput`s: fp16 on the CPU, and bf16 with onnx (the
    CPU provider has no bf16 kernels, and dlab exports no bf16 graph). For onnx on "cuda" the GPU
    providers come from `choose_providers`; any that cannot run fall back, with a warning, to the CPU.
    """
    if kind not in BACKEND_KINDS:
        raise BadInput(f"backend {kind!r}: choose {' or '.join(BACKEND_KINDS)}")
    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError):
        raise BadInput(f"unknown device {device!r}") from None
    if dev.type == "cpu" and precision == "fp16":
        raise BadInput("fp16 is not supported on the CPU; use fp32" + (" or bf16" if kind == "eager" else ""))
    if kind == "eager":
        return EagerBackend(model.unet, device=device, precision=precision)  # type: ignore[arg-type]
    if precision == "bf16":
        if dev.type == "cpu":
            raise BadInput("--backend onnx cannot run bf16 on the CPU (the CPU provider has no bf16 kernels); use fp32")
        raise BadInput("--backend onnx cannot run bf16 (dlab exports fp32 and fp16 graphs only); use fp16 or fp32")
    if dev.type not in ("cpu", "cuda"):
        raise BadInput(f"--backend onnx runs on cpu or cuda, not {device!r}")
    if dev.type == "cpu":
        return OrtBackend(model, [CPU_PROVIDER], precision, cache_root)

    import onnxruntime as ort

    available = list(ort.get_available_providers())
    providers = choose_providers(snapshot, available)
    if not GPU_PROVIDERS & set(providers):
        reason = _excluded_reason(snapshot, CUDA_PROVIDER, available)
        warnings.warn(f"onnxruntime: {CUDA_PROVIDER} not used ({reason}); running on {CPU_PROVIDER}",
                      ProviderFallbackWarning, stacklevel=2)
    return OrtBackend(model, providers, precision, cache_root, device_id=dev.index or 0)
