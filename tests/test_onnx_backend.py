"""The ONNX Runtime backend on the tiny model: parity with eager PyTorch, the export cache, provider
choice and fallback, the fp16 graph, and the combinations that cannot run."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from dlab.errors import BadInput
from dlab.planner.snapshot import ProviderCheck
from dlab.runtime import onnx_backend as ob
from dlab.runtime.backends import EagerBackend
from dlab.runtime.image import ImageModel, ImageRequest, denoise_prompts, generate_images, initial_noise

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

PROMPTS = ["a red circle on a black background", "", "a large blue hexagon"]


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return ImageModel.load(tiny_model_path)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def ort_cpu(model, cache_root):
    return ob.make_backend(model, "onnx", "cpu", "fp32", cache_root=cache_root)


def _inputs(model, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, model.image_size, model.image_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    t[0] = 999  # the first step of "trailing" spacing, where the timestep embedding matters most
    (emb, mask), _ = model.encode((PROMPTS * batch)[:batch])
    return x, t, (emb, mask)


# -------------------------------------------------------------------------------------------- parity
def test_backend_identity(ort_cpu):
    assert ort_cpu.name == "onnxruntime" and ort_cpu.device == "cpu" and ort_cpu.precision == "fp32"
    assert ort_cpu.provider == "CPUExecutionProvider"
    assert ort_cpu.unet_session.get_providers()[0] == "CPUExecutionProvider"


@pytest.mark.parametrize("batch", [1, 3])  # the graph was traced at batch 2: both batches are dynamic
def test_denoiser_matches_eager_fp32(model, ort_cpu, batch):
    x, t, ctx = _inputs(model, batch)
    ref = EagerBackend(model.unet)(x, t, ctx)
    out = ort_cpu(x, t, ctx)
    assert out.dtype == torch.float32 and out.shape == ref.shape == x.shape
    assert ref.abs().max() > 0.1  # a real, non-zero output to compare
    assert (out - ref).abs().max().item() <= 1e-4


def test_text_encoder_matches_eager(model, ort_cpu):
    enc = model.tokenizer.encode(PROMPTS)
    with torch.inference_mode():
        ref_emb, ref_mask = model.text_encoder(enc.ids, enc.mask)
    emb, mask = ort_cpu.encode_text(enc.ids, enc.mask)
    assert emb.dtype == torch.float32 and mask.dtype == torch.bool
    assert emb.shape == ref_emb.shape and torch.equal(mask, ref_mask)
    assert (emb - ref_emb).abs().max().item() <= 1e-5
    # one prompt (batch 1) too
    emb1, _ = ort_cpu.encode_text(enc.ids[:1], enc.mask[:1])
    assert (emb1 - ref_emb[:1]).abs().max().item() <= 1e-5


def test_image_model_encode_uses_the_backends_text_encoder(model, ort_cpu):
    calls = []
    real = ort_cpu.encode_text

    class Spy:
        def encode_text(self, ids, mask):
            calls.append(ids.shape[0])
            return real(ids, mask)

    (emb, _), unknown = model.encode(PROMPTS, Spy())
    (ref, _), _ = model.encode(PROMPTS)
    assert calls == [3] and unknown == ["hexagon"]
    assert (emb - ref).abs().max().item() <= 1e-5


def test_ddim_sampling_matches_eager(model, ort_cpu):
    """Full DDIM (η = 0) with guidance: every step's denoiser call and both text encodings through ORT."""
    def run(backend):
        x, g = initial_noise(3, 2, model.image_size)
        out, _ = denoise_prompts(model, backend, ["a red circle on a black background"] * 2, x, sampler="ddim",
                                 steps=8, guidance=3.0, eta=0.0, generator=g)
        return out

    ref, out = run(EagerBackend(model.unet)), run(ort_cpu)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= 1e-3

    req = ImageRequest(prompt="a red circle on a black background", steps=8, batch=2, seed=3)
    a, b = generate_images(model, req, EagerBackend(model.unet)), generate_images(model, req, ort_cpu)
    assert b.params["backend"] == "onnxruntime" and b.params["device"] == "cpu" and b.params["precision"] == "fp32"
    assert b.images.shape == a.images.shape
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1  # uint8 rounding at most


# --------------------------------------------------------------------------------------------- cache
def test_export_is_cached_and_quiet(model, tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = ob.make_backend(model, "onnx", "cpu", cache_root=tmp_path)
    # The exporter's warnings are hidden. (ResourceWarning: probe._captured_stderr_fd never closes its
    # temporary file; not this module's to fix.)
    seen = [w for w in seen if not issubclass(w.category, ResourceWarning)]
    assert not seen, [f"{w.category.__name__}: {w.message}" for w in seen]
    assert first.export.exported and first.export.dir.parent == tmp_path / "onnx"
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.export.dir.iterdir()}
    count = ob.EXPORT_COUNT

    second = ob.make_backend(model, "onnx", "cpu", cache_root=tmp_path)
    assert not second.export.exported and second.export.dir == first.export.dir
    assert ob.EXPORT_COUNT == count
    assert {p.name: p.stat().st_mtime_ns for p in second.export.dir.iterdir()} == mtimes
    # nothing but the entry is left in the cache (the temporary export directory was renamed)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [first.export.key]


def test_cache_key_depends_on_weights_dtype_and_torch(model, monkeypatch):
    key = ob.export_key(model.sha256, "fp32")
    assert key == ob.export_key(model.sha256, "fp32")
    assert key != ob.export_key("0" * 64, "fp32")
    assert key != ob.export_key(model.sha256, "fp16")
    other = dataclasses.replace(model, sha256="1" * 64)  # the same nets under another weights hash
    assert ob.export_key(other.sha256, "fp32") != key
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert ob.export_key(model.sha256, "fp32") != key


def test_damaged_cache_entry_is_exported_again(model, tmp_path):
    first = ob.ensure_export(model, "fp32", tmp_path)
    size = first.unet.stat().st_size
    with open(first.unet, "r+b") as f:  # a partial write: the first half of the file
        f.truncate(size // 2)
    count = ob.EXPORT_COUNT
    again = ob.ensure_export(model, "fp32", tmp_path)
    assert again.exported and again.dir == first.dir and ob.EXPORT_COUNT == count + 2  # both nets
    assert again.unet.stat().st_size == size

    (again.dir / ob.MANIFEST_FILE).unlink()  # an entry without its manifest is not trusted either
    assert ob.ensure_export(model, "fp32", tmp_path).exported
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [first.key]

    backend = ob.OrtBackend(model, cache_root=tmp_path)
    assert not backend.export.exported
    x, t, ctx = _inputs(model, 2)
    assert (backend(x, t, ctx) - EagerBackend(model.unet)(x, t, ctx)).abs().max().item() <= 1e-4


# ----------------------------------------------------------------------------------------- providers
def _snapshot(machine, checks: dict[str, bool]):
    snap = machine("main_course")
    snap.software.onnxruntime.provider_checks = [
        ProviderCheck(provider=p, works=ok, detail="session created" if ok else "libcudnn.so.9: not found")
        for p, ok in checks.items()
    ]
    return snap


def test_choose_providers(machine):
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ob.choose_providers(None, every) == every
    assert ob.choose_providers(None, list(reversed(every))) == every  # our order, not ORT's
    assert ob.choose_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    proven = _snapshot(machine, {"CPUExecutionProvider": True, "CUDAExecutionProvider": True})
    # TensorRT is listed but the snapshot never proved it: not tried
    assert ob.choose_providers(proven, every) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ob.choose_providers(proven, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    broken = _snapshot(machine, {"CPUExecutionProvider": True, "CUDAExecutionProvider": False})
    assert ob.choose_providers(broken, every) == ["CPUExecutionProvider"]


def test_snapshot_proving_cuda_broken_runs_on_cpu_with_the_reason(model, cache_root, machine):
    broken = _snapshot(machine, {"CPUExecutionProvider": True, "CUDAExecutionProvider": False})
    with pytest.warns(ob.ProviderFallbackWarning, match=r"CUDAExecutionProvider not used \(libcudnn\.so\.9"):
        backend = ob.make_backend(model, "onnx", "cuda", "fp32", snapshot=broken, cache_root=cache_root)
    assert backend.provider == "CPUExecutionProvider" and backend.device == "cpu"


def _cuda_listed_but_broken() -> str:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build does not list CUDAExecutionProvider")
    from dlab.planner.probe import PROBE_MODEL

    session, reason = ob.create_session(PROBE_MODEL, "CUDAExecutionProvider", ob.session_options(1))
    if session is not None:
        pytest.skip("CUDAExecutionProvider works on this machine")
    return reason


def test_listed_but_broken_provider_falls_back_to_cpu_with_its_reason(model, cache_root):
    reason = _cuda_listed_but_broken()
    assert reason and "placed the session" not in reason  # ORT's own reason was captured
    with pytest.warns(ob.ProviderFallbackWarning) as seen:
        backend = ob.make_backend(model, "onnx", "cuda", "fp32", cache_root=cache_root)
    assert backend.provider == "CPUExecutionProvider" and backend.device == "cpu" and backend.precision == "fp32"
    assert "CUDAExecutionProvider" in backend.skipped
    messages = [str(w.message) for w in seen]
    cuda = [m for m in messages if m.startswith("onnxruntime: CUDAExecutionProvider cannot run here (")]
    assert cuda and reason in cuda[0] and "\n" not in cuda[0], messages
    x, t, ctx = _inputs(model, 2)
    assert (backend(x, t, ctx) - EagerBackend(model.unet)(x, t, ctx)).abs().max().item() <= 1e-4


def test_fp16_request_that_lands_on_cpu_runs_fp32(model, cache_root):
    _cuda_listed_but_broken()
    with pytest.warns(ob.ProviderFallbackWarning) as seen:
        backend = ob.make_backend(model, "onnx", "cuda", "fp16", cache_root=cache_root)
    assert any("CPUExecutionProvider runs the fp32 graph, not fp16" in str(w.message) for w in seen)
    assert backend.provider == "CPUExecutionProvider" and backend.precision == "fp32"
    assert backend.export.dtype == "fp32"


def test_session_options():
    opts = ob.session_options()
    assert opts.intra_op_num_threads == torch.get_num_threads()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert ob.session_options(3).intra_op_num_threads == 3


# ---------------------------------------------------------------------------------------------- fp16
def _types(model_proto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model_proto, strict_mode=True)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            types[n.output[0]] = n.attribute[0].t.data_type
    return types


def test_fp16_graph_keeps_norms_softmax_and_timesteps_in_fp32(model, cache_root):
    export = ob.ensure_export(model, "fp16", cache_root)
    assert export.dtype == "fp16" and export.key != ob.export_key(model.sha256, "fp32")
    m = onnx.load(str(export.unet))
    onnx.checker.check_model(m, full_check=True)
    types = _types(m)
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    g = m.graph
    assert all(types[i.name] == FLOAT for i in g.input if i.name != "context_mask")
    assert types["out"] == FLOAT

    kept = [n for n in g.node if n.op_type in ("InstanceNormalization", "LayerNormalization", "Softmax")]
    assert {n.op_type for n in kept} == {"InstanceNormalization", "LayerNormalization", "Softmax"}
    for n in kept:  # every input (data, scale, bias) and output in fp32
        assert all(types[i] == FLOAT for i in n.input if i), (n.name, [types[i] for i in n.input])
        assert all(types[o] == FLOAT for o in n.output), n.name
    for n in g.node:
        if n.op_type in ("Cos", "Sin"):  # the sinusoidal timestep embedding
            assert types[n.input[0]] == FLOAT and types[n.output[0]] == FLOAT
    heavy = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose", "MatMul")]
    assert heavy and all(types[n.output[0]] == HALF for n in heavy)
    conv_weights = [n.input[1] for n in g.node if n.op_type == "Conv"]
    assert all(types[w] == HALF for w in conv_weights)
    # the text encoder of an fp16 export stays fp32
    text = onnx.load(str(export.text_encoder))
    assert not any(t.data_type == HALF for t in text.graph.initializer)


def test_fp16_graph_output_is_close_where_the_cpu_can_run_it(model, cache_root):
    """Not the GPU check (fp16 on CUDA is not verified here): where this ORT build's CPU provider has
    the fp16 kernels, the converted graph must stay close to fp32."""
    export = ob.ensure_export(model, "fp16", cache_root)
    try:
        session = ort.InferenceSession(str(export.unet), providers=["CPUExecutionProvider"])
    except Exception as e:  # no fp16 kernel for some op on this CPU build
        pytest.skip(f"the CPU provider cannot run the fp16 graph here ({str(e).splitlines()[0]})")
    x, t, (emb, mask) = _inputs(model, 3)
    (out,) = session.run(None, {"x": x.numpy(), "t": t.float().numpy(), "context": emb.numpy(),
                                "context_mask": mask.numpy()})
    ref = EagerBackend(model.unet)(x, t, (emb, mask))
    assert out.dtype == np.float32
    assert np.abs(out - ref.numpy()).max() <= 1e-2 * max(1.0, float(ref.abs().max()))


# ------------------------------------------------------------------------------------------- factory
def test_factory_kinds_and_impossible_combinations(model, tmp_path):
    assert isinstance(ob.make_backend(model, "eager", "cpu", "fp32"), EagerBackend)
    cases = [
        (("onnx", "cpu", "bf16"), "no bf16 kernels"),
        (("onnx", "cpu", "fp16"), "fp16 is not supported on the CPU"),
        (("eager", "cpu", "fp16"), "fp16 is not supported on the CPU"),
        (("onnx", "cuda", "bf16"), "bf16"),
        (("tensorrt", "cpu", "fp32"), "backend 'tensorrt'"),
        (("onnx", "cpu", "int8"), "precision"),
        (("onnx", "mps", "fp32"), "cpu or cuda"),
        (("onnx", "gpu0", "fp32"), "unknown device"),
    ]
    for (kind, device, precision), needle in cases:
        with pytest.raises(BadInput, match=needle) as e:
            ob.make_backend(model, kind, device, precision, cache_root=tmp_path)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "onnx").exists()  # none of them exported anything
