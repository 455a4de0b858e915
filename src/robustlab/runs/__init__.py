"""The run folder: what training writes and evaluation reads, below both ``train`` and ``evaluate``.

``checkpoint`` (safetensors files with a JSON header), ``atomic`` (temp file + rename writes),
``metrics`` (the ``metrics.jsonl`` log), ``model`` (rebuild a model from a checkpoint), ``ranks``
(device and ``torchrun`` rank resolution). Nothing here imports ``robustlab.train`` or
``robustlab.evaluate``.
"""
