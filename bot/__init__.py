"""The Discord side and the `stepgrid` command line: never imports torch, diffusers or transformers."""
