"""A compiled denoiser: torch.compile with CUDA graphs for one image size and a few static batch sizes, every
batch padded up to its bucket; other sizes, models and LoRA sets run eagerly."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from inference.engine.lanes import Lane
from inference.families import DenoiserBatch
from inference.models.adapters import AdapterKey
from inference.models.loading import LoadedModel

# Batch sizes (in lanes) a compiled denoiser is specialised for; a batch is padded up to the next one.
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32)


CUDA_GRAPH_COMPILER = partial(torch.compile, mode="reduce-overhead", fullgraph=True)


class CompiledDenoiser:
    """The default model's denoiser compiled with CUDA graphs for one size and a few static batch sizes, and
    which denoiser each batch calls. The engine (`LaneEngine`) sets the attributes below."""

    model: LoadedModel
    batch_buckets: tuple[int, ...]
    _compiled_unet: Any
    _compiled_group: tuple[str, AdapterKey, int, int] | None

    def _denoiser_for(self, lanes: list[Lane]) -> tuple[Any, int]:
        """The denoiser to call for this batch and how many rows (lanes plus padding) to give it."""
        job = lanes[0].job
        compiled = self._compiled_unet is not None and lanes[0].group == self._compiled_group
        if compiled and job.model.family.supports_padding([lane.conditioning for lane in lanes]):
            for bucket in self.batch_buckets:
                if bucket >= len(lanes):
                    return self._compiled_unet, bucket
        return job.model.family.denoiser, len(lanes)

    def compile_unet(
        self,
        height: int = 512,
        width: int = 512,
        compiler: Callable[[Any], Any] = CUDA_GRAPH_COMPILER,
    ) -> float:
        """torch.compile the default model's denoiser with CUDA graphs for one image size and a few
        static batch sizes.

        Every bucket is compiled now, during warm-up, so no user waits for a compile; batches are
        padded up to their bucket. Other sizes and models run eagerly. Returns the seconds it took.
        """
        started = time.perf_counter()
        torch._dynamo.config.automatic_dynamic_shapes = False  # a dynamic UNet compile takes "forever"
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 2 * len(self.batch_buckets))
        model = self.model
        family = model.family
        self._compiled_unet = compiler(family.denoiser)
        self._compiled_group = (model.name, (), height, width)  # lanes without LoRAs only
        conditioning = family.encode("", "", 7.5, height, width)
        scheduler = family.new_scheduler("Euler", 2, 0, height, width)
        generator = torch.Generator("cpu").manual_seed(0)
        with torch.no_grad():
            for bucket in self.batch_buckets:
                latents = [family.initial_latents(scheduler, height, width, generator) for _ in range(bucket)]
                timesteps = [scheduler.timesteps[0]] * bucket
                for _ in range(3):  # compile, record the CUDA graph, replay it
                    family.predict(
                        self._compiled_unet, DenoiserBatch(latents, timesteps, [conditioning] * bucket, bucket)
                    )
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
        return time.perf_counter() - started
