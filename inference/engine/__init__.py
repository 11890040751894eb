"""The lane engine: continuous batching of denoising lanes, batched scheduler steps, film frames."""
