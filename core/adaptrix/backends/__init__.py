"""Execution backends: how a loaded model runs.

:mod:`~adaptrix.backends.contract` is what every backend implements (a
:class:`~adaptrix.backends.contract.Backend` loads a source into a
:class:`~adaptrix.backends.contract.Runner`); :mod:`~adaptrix.backends.choice`
picks the backend for a source; :mod:`adaptrix.backends.transformers` is the
reference backend (transformers + peft) with its step-level batching. Plugins
add others through the ``backends`` hook. Nothing here imports torch.
"""
