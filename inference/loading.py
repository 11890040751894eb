"""Devices, `from_pretrained` loading, and the built-in random-weight test models (one per family)."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from inference.families import FAMILY_MODULES, Family, Pipeline, family_for, supported_pipelines
from inference.hub import why_the_hub_failed
from inference.protocol import ModelInfo, ModelUnavailable, WorkerConfig
from inference.registry import TEST_MODEL_NAMES, ModelSpec, spec_for

log = logging.getLogger(__name__)

TEST_MODELS = TEST_MODEL_NAMES
# Bump a model's revision when its config changes, so stale caches are rebuilt. `tiny` stays at 3:
# its weights (and so every saved result) are the same as before the families were split out.
TEST_MODEL_REVISIONS = {"tiny": 3, "sd15-arch": 3, "tiny-sdxl": 1, "tiny-flux": 1, "tiny-flux-dev": 1, "tiny-sd3": 1}
TEST_MODEL_NATIVE_SIZE = 256  # the tiny models are meant for small images on a CPU
# Full-size architectures with random weights, for GPU benchmarks: built on the device in memory
# (saving 12B random parameters to disk and reading them back would only measure the disk).
IN_MEMORY_TEST_MODELS = ("sdxl-arch", "flux-schnell-arch")


# --- devices --------------------------------------------------------------------------------------


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """CUDA fp16 when present, else CPU fp32; either can be overridden."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(['auto', *dtypes])}; got {dtype!r}.")
    return dev, dtypes[dtype]


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "stepgrid"


# --- the random-weight test models --------------------------------------------------------------------


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP-style vocabulary of single bytes, written locally so no tokenizer download is needed."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in chars:
            vocab[char + suffix] = len(vocab)
    return vocab


def _clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer(vocab=_byte_level_vocab(), merges=[], model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    """A T5-style SentencePiece (Unigram) tokenizer over single characters, built offline
    (transformers 5: T5Tokenizer is the fast one, `T5TokenizerFast` an alias of it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(ord("!"), ord("~") + 1)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    return T5Tokenizer(
        tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=512,
    )  # fmt: skip


def _tiny_vae(**extra: Any) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(4, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=256,
        mid_block_add_attention=False,
        **extra,
    )


def _tiny_clip_config(**extra: Any) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77, **extra,
    )  # fmt: skip


def _sd_components(architecture: str) -> dict[str, Any]:
    """Configs for "tiny" (fast on CPU) or "sd15-arch"; the build order fixes the seeded weights."""
    torch.manual_seed(0)
    if architecture == "tiny":
        # Small enough that per-call overhead dominates, as it does for SD1.5 on a GPU at small batch.
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=4,
        )
        vae = _tiny_vae()
        text_config = _tiny_clip_config()
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        text_config = CLIPTextConfig(
            bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=3072,
            num_attention_heads=12, num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
            projection_dim=768, hidden_act="quick_gelu",
        )  # fmt: skip
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
    )  # fmt: skip
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(text_config),
        "tokenizer": _clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def _tiny_sdxl() -> Pipeline:
    """SDXL's layout in miniature: two CLIP encoders (the second with a projection), text_time
    added conditioning, Euler with leading spacing as SDXL base ships."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=8 * 6 + 32,  # 6 time ids x 8 + the pooled projection
        cross_attention_dim=64,  # both encoders' hidden states side by side
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(force_upcast=True),
        text_encoder=CLIPTextModel(_tiny_clip_config()),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config(projection_dim=32)),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def _tiny_t5(d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(vocab_size=128, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    )  # fmt: skip


def _tiny_sd3() -> Pipeline:
    """SD3's layout in miniature: an MMDiT with 2x2 patches, two CLIP encoders with projections
    (pooled 32 + 32) and a T5 whose width the CLIP sequence is padded to, shift 3.0."""
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModelWithProjection(_tiny_clip_config(projection_dim=32)),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_clip_config(projection_dim=32)),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_tiny_t5(d_model=64),
        tokenizer_3=_t5_tokenizer(),
    )


def _tiny_flux(dev: bool) -> Pipeline:
    """FLUX.1's layout in miniature: double- and single-stream blocks, CLIP pooled + T5, 16-channel
    packed latents; schnell-like (no guidance input, fixed shift) or dev-like."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=dev,
    )
    t5 = _tiny_t5(d_model=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0 if dev else 1.0, use_dynamic_shifting=dev, base_image_seq_len=256, max_image_seq_len=4096,
        base_shift=0.5, max_shift=1.15,
    )  # fmt: skip
    return FluxPipeline(
        scheduler=scheduler,
        vae=_tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=CLIPTextModel(_tiny_clip_config(projection_dim=32)),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )


def _sdxl_arch() -> Pipeline:
    """SDXL base's architecture (UNet 2.6B, CLIP-L + OpenCLIP-bigG) with random weights."""
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )  # fmt: skip
    clip_l = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=3072,
        num_attention_heads=12, num_hidden_layers=12, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip
    clip_g = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=1280, intermediate_size=5120,
        num_attention_heads=20, num_hidden_layers=32, vocab_size=49408, projection_dim=1280, hidden_act="gelu",
    )  # fmt: skip
    with torch.device("cpu"):  # schedulers keep their tables on the CPU, whatever device the weights go to
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
            timestep_spacing="leading",
        )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=_full_vae(latent_channels=4, scaling_factor=0.13025, force_upcast=True),
        text_encoder=CLIPTextModel(clip_l),
        text_encoder_2=CLIPTextModelWithProjection(clip_g),
        tokenizer=_clip_tokenizer(),
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def _flux_schnell_arch() -> Pipeline:
    """FLUX.1-schnell's architecture (transformer 12B: 19 double + 38 single blocks, T5-XXL, CLIP-L)
    with random weights; diffusers' FluxTransformer2DModel defaults are FLUX.1's."""
    clip_l = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=3072,
        num_attention_heads=12, num_hidden_layers=12, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
    )  # fmt: skip
    t5_xxl = T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    with torch.device("cpu"):  # schedulers keep their tables on the CPU, whatever device the weights go to
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    vae = _full_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                    use_post_quant_conv=False)  # fmt: skip
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(clip_l),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=T5EncoderModel(t5_xxl),
        tokenizer_2=_t5_tokenizer(),
        transformer=FluxTransformer2DModel(guidance_embeds=False),
    )


def _full_vae(**extra: Any) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=1024, **extra,
    )  # fmt: skip


def build_test_pipeline(name: str) -> Pipeline:
    """A random-weight pipeline of one family, seeded so it is the same every time."""
    if name in ("tiny", "sd15-arch"):
        return StableDiffusionPipeline(**_sd_components(name))
    if name == "tiny-sdxl":
        return _tiny_sdxl()
    if name in ("tiny-flux", "tiny-flux-dev"):
        return _tiny_flux(dev=name == "tiny-flux-dev")
    if name == "tiny-sd3":
        return _tiny_sd3()
    if name == "sdxl-arch":
        return _sdxl_arch()
    if name == "flux-schnell-arch":
        return _flux_schnell_arch()
    raise ValueError(f"unknown test model {name!r}")


def ensure_test_model(name: str, cache_dir: Path) -> Path:
    """Build a random-weight test model once and save it with `save_pretrained`."""
    folder = cache_dir / f"{name}-random-weights-v{TEST_MODEL_REVISIONS[name]}"
    if (folder / "model_index.json").exists():
        return folder
    log.info("building the random-weight test model %r in %s (not a real model)", name, folder)
    pipe = build_test_pipeline(name)
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp)
    (tmp / "STEPGRID_TEST_MODEL.json").write_text(json.dumps({"random_weights": True}))
    tmp.replace(folder)
    return folder


# --- loading --------------------------------------------------------------------------------------


def _first_sentence(text: str, limit: int = 200) -> str:
    """diffusers' loading errors run to paragraphs; the first sentence says what went wrong."""
    first = text.strip().split("\n")[0]
    first = re.sub(r"^Cannot load model [^:]+: ", "", first)  # diffusers repeats the model id
    for end in (". ", " ("):
        if end in first:
            first = first[: first.index(end)]
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass
class LoadedModel:
    pipe: Pipeline
    name: str
    device: torch.device
    dtype: torch.dtype
    is_test_model: bool
    load_seconds: float
    family: Family
    info: ModelInfo


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is one line, safe to show an operator."""


def load_model(
    spec: ModelSpec | str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load one model through `from_pretrained` (hub id, local folder or a built-in test model)."""
    spec = spec_for(spec) if isinstance(spec, str) else spec
    started = time.perf_counter()
    torch_device, torch_dtype = resolve_device(device, dtype)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    is_test_model = spec.is_test_model
    source = spec.source
    if is_test_model and spec.source not in IN_MEMORY_TEST_MODELS:
        source = str(ensure_test_model(spec.source, cache))
    label = repr(spec.source) if spec.name == spec.source else f"{spec.name!r} from {spec.source!r}"
    if not is_test_model:
        _check_local_source(Path(source).expanduser(), label)
    try:
        if spec.source in IN_MEMORY_TEST_MODELS:
            pipe = _build_in_memory(spec.source, torch_device, torch_dtype)
        else:
            pipe = DiffusionPipeline.from_pretrained(
                source,
                dtype=torch_dtype,
                variant=spec.variant,
                revision=spec.revision,
                cache_dir=str(cache / "hub") if not is_test_model else None,
                safety_checker=None,
                requires_safety_checker=False,
            )
    except Exception as exc:
        # A folder or a download fails to load in many of diffusers' and torch's ways (OSError for a
        # missing file, AttributeError for a pipeline class diffusers lacks, the safetensors error for a
        # cut-off file…): each is the model's fault, told in one line, never a worker crash.
        reason = _first_sentence(str(exc)).removesuffix(".") or type(exc).__name__
        folder = Path(source).expanduser().exists()
        if not is_test_model and not folder:
            # diffusers says "not cached locally" whether the hub was unreachable or has no such model.
            reason = why_the_hub_failed(source) or reason
        fix = "Save or download that folder again, whole, or give" if folder else "Give a local diffusers folder,"
        if spec.variant and "variant" in reason:
            fix = f"Leave out variant = {spec.variant!r} (this model has no such weights), or give"
        raise ModelLoadError(
            f"Could not load model {label} ({reason}). {fix} a hub id that can be downloaded, "
            f"or a test model such as 'tiny' (--model, STEPGRID_MODEL or a registry source)."
        ) from exc
    try:
        family = family_for(pipe, spec, torch_device, torch_dtype)
    except LookupError:
        raise ModelLoadError(_unsupported_pipeline_message(label, type(pipe).__name__)) from None
    try:
        info = family.info()
    except ValueError as exc:
        raise ModelLoadError(f"Model {spec.name!r}: {exc}.") from None
    if is_test_model and spec.source not in IN_MEMORY_TEST_MODELS and spec.source != "sd15-arch":
        info = _with_native_size(info, TEST_MODEL_NATIVE_SIZE)
    pipe.to(torch_device)
    pipe.set_progress_bar_config(disable=True)
    if torch_device.type == "cuda":
        denoiser: Any = family.denoiser
        denoiser.to(memory_format=torch.channels_last)
    seconds = time.perf_counter() - started
    return LoadedModel(pipe, spec.name, torch_device, torch_dtype, is_test_model, seconds, family, info)


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def _check_local_source(path: Path, label: str) -> None:
    """Refuse, before loading anything, a local path that isn't a pipeline folder Stepgrid runs: a
    single-file checkpoint (say how to convert it), a folder without model_index.json, or a folder of
    a pipeline no family adapter takes (diffusers would load every weight before that shows)."""
    if path.is_file():
        raise ModelLoadError(_single_file_message(path, label))
    if not path.is_dir():
        return  # a hub id, or a missing folder: from_pretrained says which
    index = path / "model_index.json"
    if not index.is_file():
        checkpoints = sorted(p for p in path.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES and p.is_file())
        if checkpoints:
            raise ModelLoadError(_single_file_message(checkpoints[0], label))
        raise ModelLoadError(
            f"Model {label}: {path} has no model_index.json, so it is not a diffusers pipeline folder; give the "
            "folder that holds model_index.json (the one `save_pretrained` or `hf download` wrote)."
        )
    try:
        pipeline = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return  # a damaged index: from_pretrained's own error says what is wrong with it
    if isinstance(pipeline, str) and pipeline not in FAMILY_MODULES:
        raise ModelLoadError(_unsupported_pipeline_message(label, pipeline))


def _single_file_message(path: Path, label: str) -> str:
    """How to convert the checkpoint, for the family its tensor names show (a .safetensors header)."""
    header = _safetensors_header(path)
    folder = path.with_suffix("")
    if "double_blocks." in header:  # a FLUX.1 transformer alone, as Black Forest Labs ship it
        base = "black-forest-labs/FLUX.1-dev" if "guidance_in." in header else "black-forest-labs/FLUX.1-schnell"
        convert = (
            f"from diffusers import FluxPipeline, FluxTransformer2DModel; FluxPipeline.from_pretrained('{base}', "
            f"transformer=FluxTransformer2DModel.from_single_file('{path}')).save_pretrained('{folder}')"
        )
    else:
        pipeline = "StableDiffusionXLPipeline" if "conditioner.embedders.1." in header else "StableDiffusionPipeline"
        convert = f"from diffusers import {pipeline}; {pipeline}.from_single_file('{path}').save_pretrained('{folder}')"
    return (
        f"Model {label} is a single-file checkpoint ({path.name}); Stepgrid loads diffusers folders. Convert it "
        f'once: python -c "{convert}" and give that folder.'
    )


def _safetensors_header(path: Path) -> str:
    """A .safetensors file's JSON header (its tensor names); "" for another format."""
    try:
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            return file.read(length).decode("utf-8") if 0 < length < 100_000_000 else ""
    except (OSError, UnicodeDecodeError):
        return ""


def _unsupported_pipeline_message(label: str, pipeline: str) -> str:
    return (
        f"Model {label} is a {pipeline}; Stepgrid runs {supported_pipelines()} models: "
        "give one of those (--model, STEPGRID_MODEL or a registry source)."
    )


def _build_in_memory(name: str, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """A full-size random-weight pipeline built straight on the device (initialising 12B parameters
    on a GPU takes seconds), seeded so every run is the same model."""
    log.info("building the random-weight %r on %s (benchmark architecture, not a real model)", name, device)
    torch.manual_seed(0)
    with torch.device(device):
        pipe = build_test_pipeline(name)
    pipe.to(dtype=dtype)
    return pipe


def _with_native_size(info: ModelInfo, size: int) -> ModelInfo:
    from dataclasses import replace

    return replace(info, native_size=size)


def load_models(config: WorkerConfig) -> tuple[list[LoadedModel], list[ModelUnavailable]]:
    """Load every model of the registry; one that fails is reported, the others still load."""
    loaded: list[LoadedModel] = []
    unavailable: list[ModelUnavailable] = []
    for spec in config.models:
        try:
            loaded.append(load_model(spec, device=config.device, dtype=config.dtype, cache_dir=config.cache_dir))
        except ModelLoadError as exc:
            log.error("model %s is unavailable: %s", spec.name, exc)
            unavailable.append(ModelUnavailable(spec.name, str(exc)))
    return loaded, unavailable
