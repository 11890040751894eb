"""The models: where a model comes from (the hub, a folder), what a folder holds before loading, loading a
pipeline and its LoRAs, and the built-in test models (what to load is inference.registry)."""
