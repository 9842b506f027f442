"""A plan as the settings other tools take: ComfyUI and AUTOMATIC1111 command-line flags, an
InvokeAI `invokeai.yaml` fragment, or diffusers code.

Flag meanings (each tool's own documentation):
- ComfyUI `main.py --help`: --gpu-only / --highvram / --normalvram / --lowvram / --novram / --cpu;
  --bf16-unet, --fp16-unet, --fp8_e4m3fn-unet, --force-fp32; --bf16-vae, --fp32-vae.
- AUTOMATIC1111 wiki "Command Line Arguments and Settings": --medvram (one model part on the GPU at a
  time), --lowvram (sub-module offload), --no-half / --no-half-vae (fp32), --opt-sdp-attention,
  --use-cpu all.
- InvokeAI "Configuration" docs: device, precision, enable_partial_loading (low-VRAM mode),
  max_cache_vram_gb, max_cache_ram_gb.
- diffusers "Reduce memory usage": enable_model_cpu_offload, enable_sequential_cpu_offload,
  vae.enable_slicing; BitsAndBytesConfig for nf4; SD3 without T5: text_encoder_3=None.
"""

from __future__ import annotations

from dlab.planner.plan import Plan

HF_REPOS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
    "sd35-large": "stabilityai/stable-diffusion-3.5-large",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
}
_TORCH_DTYPE = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16",
                "fp8": "torch.bfloat16", "nf4": "torch.bfloat16"}


def _unsupported(plan: Plan, tool: str) -> str | None:
    if plan.model == "shapes":
        return f"# {plan.model} is dlab's own model: run it with `dlab generate image`; {tool} cannot load it"
    if plan.kind == "voice":
        return f"# {plan.model} is a voice model: {tool} does not run it"
    return None


def comfyui(plan: Plan) -> str:
    if (msg := _unsupported(plan, "ComfyUI")) is not None:
        return msg
    flags = []
    if plan.device == "cpu":
        flags.append("--cpu")
    else:
        flags.append({"none": "--highvram", "model": "--lowvram", "sequential": "--novram"}[plan.offload])
        flags.append({"bf16": "--bf16-unet", "fp16": "--fp16-unet", "fp32": "--force-fp32",
                      "fp8": "--fp8_e4m3fn-unet", "nf4": "--bf16-unet"}[plan.precision])
        flags.append("--fp32-vae" if plan.precision == "fp32" else "--bf16-vae" if plan.precision != "fp16" else "")
    note = "  # nf4: load the model through the ComfyUI-GGUF / bitsandbytes NF4 loader node" if plan.precision == "nf4" else ""
    return "python main.py " + " ".join(f for f in flags if f) + note + f"\n# batch_size {plan.batch} in the Empty Latent Image node, {plan.width}x{plan.height}"


def a1111(plan: Plan) -> str:
    if (msg := _unsupported(plan, "AUTOMATIC1111")) is not None:
        return msg
    if plan.precision in ("fp8", "nf4") or plan.model.startswith(("flux", "sd35")):
        return (f"# AUTOMATIC1111 does not run {plan.model}"
                + (f" at {plan.precision}" if plan.precision in ("fp8", "nf4") else "")
                + ": use ComfyUI, InvokeAI or diffusers (dlab plan --emit comfyui)")
    args = ["--opt-sdp-attention"]
    if plan.device == "cpu":
        args += ["--use-cpu all", "--no-half", "--skip-torch-cuda-test"]
    else:
        args += {"none": [], "model": ["--medvram"], "sequential": ["--lowvram"]}[plan.offload]
        if plan.precision == "fp32":
            args += ["--no-half", "--no-half-vae"]
    return f'export COMMANDLINE_ARGS="{" ".join(args)}"\n# batch size {plan.batch}, {plan.width}x{plan.height}'


def invokeai(plan: Plan) -> str:
    if (msg := _unsupported(plan, "InvokeAI")) is not None:
        return msg
    precision = {"fp32": "float32", "fp16": "float16"}.get(plan.precision, "bfloat16")
    lines = ["# invokeai.yaml", f"device: {'cpu' if plan.device == 'cpu' else 'cuda'}", f"precision: {precision}"]
    if plan.offload != "none":
        lines.append("enable_partial_loading: true   # low-VRAM mode: model parts move to the GPU as needed")
    if plan.vram_gib is not None:
        lines.append(f"max_cache_vram_gb: {max(plan.budget_gib - 1.0, 1.0):.0f}")
    lines.append(f"max_cache_ram_gb: {max(plan.ram_budget_gib * 0.5, 4):.0f}")
    if plan.precision in ("fp8", "nf4"):
        lines.append(f"# install a {'bnb nf4 quantized' if plan.precision == 'nf4' else 'fp8'} {plan.model} from the Model Manager's starter models")
    return "\n".join(lines)


def _denoiser(plan: Plan) -> str:
    """The pipeline attribute holding the denoiser: `unet` in SD 1.x/2.x/XL, `transformer` in SD3/Flux."""
    from dlab.profiles import model_catalog

    spec = model_catalog().get(plan.model)
    return "unet" if spec is None or spec.denoiser_kind == "unet" else "transformer"


def diffusers(plan: Plan) -> str:
    if plan.model == "shapes" or plan.kind == "voice":
        return _unsupported(plan, "diffusers") or ""
    repo = HF_REPOS.get(plan.model, plan.model)
    dtype = _TORCH_DTYPE[plan.precision]
    lines = ["import torch", "from diffusers import DiffusionPipeline", ""]
    kwargs = [f'"{repo}"', f"torch_dtype={dtype}"]
    if plan.precision == "nf4":
        lines[1:1] = ["from diffusers import PipelineQuantizationConfig"]
        kwargs.append('quantization_config=PipelineQuantizationConfig(quant_backend="bitsandbytes_4bit", '
                      'quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", '
                      f'"bnb_4bit_compute_dtype": {dtype}}}, components_to_quantize=["{_denoiser(plan)}"])')
    if plan.drop_optional:
        kwargs += ["text_encoder_3=None", "tokenizer_3=None"]
    if plan.vae_fp16_fix:
        lines[1:1] = ["from diffusers import AutoencoderKL"]
        kwargs.append('vae=AutoencoderKL.from_pretrained("madebyollin/sdxl-vae-fp16-fix", torch_dtype=torch.float16)')
    lines.append(f"pipe = DiffusionPipeline.from_pretrained({', '.join(kwargs)})")
    if plan.precision == "fp8":
        lines.append(f"pipe.{_denoiser(plan)}.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)")
    if plan.device == "cpu":
        lines.append('pipe.to("cpu")')
    else:
        lines.append({"none": f'pipe.to("{plan.device}")', "model": "pipe.enable_model_cpu_offload()",
                      "sequential": "pipe.enable_sequential_cpu_offload()"}[plan.offload])
    if plan.vae_slicing:
        lines.append("pipe.vae.enable_slicing()")
    if plan.vae_tiling:
        lines.append("pipe.vae.enable_tiling()")
    lines.append(f'images = pipe("a photo of a cat", height={plan.height}, width={plan.width}, '
                 f"num_images_per_prompt={plan.batch}).images")
    return "\n".join(lines)


EMITTERS = {"comfyui": comfyui, "a1111": a1111, "invokeai": invokeai, "diffusers": diffusers}


def emit_plan(plan: Plan, tool: str) -> str:
    text = EMITTERS[tool](plan)
    if not plan.fits:
        text = f"# warning: dlab's plan says this does not fit this machine ({plan.why.get('offload', '')})\n" + text
    return text
