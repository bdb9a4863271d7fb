"""The engine: everything that runs on the device. The only package under `pipelines/` that imports torch at
module level (tests/test_layers.py checks it). The studio (`pipelines/studio.py`) reaches it through jobs only."""
