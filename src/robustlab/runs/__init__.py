"""The run folder: what training writes and evaluation reads, below both ``train`` and ``evaluate``.

``checkpoint`` (the checkpoint format: layout, header, version), ``record`` (the evaluation record),
``metrics`` (the ``metrics.jsonl`` log), ``model`` (rebuild a model from a checkpoint), ``ranks``
(device and ``torchrun`` rank resolution). Nothing here imports ``robustlab.train`` or
``robustlab.evaluate``.
"""
