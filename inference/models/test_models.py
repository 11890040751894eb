"""The random-weight test models of every family, built from configs offline: saved once with
`save_pretrained` and then loaded through the same `from_pretrained` path as a real model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
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

from inference.families import Pipeline
from inference.registry import TEST_MODEL_NAMES

log = logging.getLogger(__name__)

TEST_MODELS = TEST_MODEL_NAMES


# Bump a model's revision when its config changes, so stale caches are rebuilt. `tiny` stays at 3:
# its weights (and so every saved result) are the same as before the families were split out.
TEST_MODEL_REVISIONS = {"tiny": 3, "sd15-arch": 3, "tiny-sdxl": 1, "tiny-flux": 1, "tiny-flux-dev": 1, "tiny-sd3": 1}


TEST_MODEL_NATIVE_SIZE = 256  # the tiny models are meant for small images on a CPU


# Full-size architectures with random weights, for GPU benchmarks: built on the device in memory
# (saving 12B random parameters to disk and reading them back would only measure the disk).
IN_MEMORY_TEST_MODELS = ("sdxl-arch", "flux-schnell-arch")


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
