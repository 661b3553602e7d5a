"""Exception classes of adaptrix.

Every error says what is at fault (file, field, value) and what to do about it.
All derive from :class:`AdaptrixError`, so callers can catch one class.
"""

from __future__ import annotations


class AdaptrixError(Exception):
    """Base class of every error adaptrix raises on purpose."""


class PluginError(AdaptrixError):
    """A plugin failed to import, failed validation or is misconfigured."""


class PluginConfigError(PluginError):
    """An ``ADAPTRIX_*_PLUGINS`` environment variable names an unknown plugin."""


class PluginUnavailableError(PluginError):
    """A family was asked for whose plugin failed, is blocked or is not installed.

    ``original`` carries the plugin's own failure when there was one.
    """

    def __init__(self, message: str, original: BaseException | None = None):
        super().__init__(message)
        self.original = original


class ModelConfigError(AdaptrixError):
    """A model's ``config.json`` is missing, unreadable or not what adaptrix needs."""


class NotACausalLMError(ModelConfigError):
    """The model is not a causal language model (an encoder, a vision tower, a head)."""


class FamilyNotDetectedError(ModelConfigError):
    """No installed plugin recognised the model."""


class RemoteCodeError(ModelConfigError):
    """The model needs ``trust_remote_code=True`` and the user did not pass it."""


class ModelLoadError(AdaptrixError):
    """The weights or tokenizer could not be loaded (corrupt file, wrong format)."""


class DeviceError(AdaptrixError):
    """The requested device or dtype is not available on this machine."""


class ModelTooLargeError(ModelLoadError):
    """The model's weights fit in the available memory in no dtype; refused before any weight is read."""


class GenerationError(AdaptrixError):
    """Bad generation input: empty prompt, bad sampling value, prompt too long. ``param``, when set, names the
    request field at fault (the server's 400 carries it)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # keeps ``param`` across processes (a Ray replica's error reaches the ingress)
        return (type(self), (str(self), self.param))


class ContextOverflowError(GenerationError):
    """The prompt alone does not fit in the model's context window."""


class ToolError(GenerationError):
    """Tools, a tool choice or a tool turn that cannot be served; ``param`` names the field at fault."""


class ChatTemplateError(GenerationError):
    """The model's chat template refused the conversation (e.g. a system message)."""


class UnknownOptionError(AdaptrixError, TypeError):
    """A keyword argument the engine and the installed plugins do not take (also a ``TypeError``)."""


class EngineStateError(AdaptrixError):
    """The engine was used before ``initialize()`` or after ``cleanup()``."""


class BatchFullError(EngineStateError):
    """A step decoder has no room for another row now (sequences or cache taken); retry once a row finishes."""


class AdapterError(AdaptrixError):
    """An adapter could not be found, read, validated, loaded or composed."""


class AdapterNotFoundError(AdapterError):
    """No adapter of that name or path exists."""


class AdapterFormatError(AdapterError):
    """An adapter's files are malformed (bad JSON, truncated safetensors, pickle)."""


class AdapterIncompatibleError(AdapterError):
    """Validation found errors; ``report`` is the :class:`CompatibilityReport`."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class AdapterPickleError(AdapterIncompatibleError):
    """The adapter's weights are a pickle (adapter_model.bin) and pickles were not allowed."""


class TrainingError(AdaptrixError):
    """Training data or options are unusable (the message names the line/field)."""


class StorageError(AdaptrixError):
    """A file or folder adaptrix writes could not be written: full disk, read-only, no permission, a file where
    a folder should be (an unusable ``ADAPTRIX_CACHE``). Nothing half-written is left behind.

    ``path`` is the output at fault; ``no_space`` is true for a full disk or quota (a server answers 507 then,
    503 otherwise).
    """

    def __init__(self, message: str, *, path=None, no_space: bool = False):
        super().__init__(message)
        self.path = path
        self.no_space = no_space


class BackendError(AdaptrixError):
    """The asked-for execution backend is not installed, cannot run here, or cannot run this model."""


class EvaluationError(AdaptrixError):
    """An evaluation task, suite or option is unusable (the message names the file, line, field and value)."""
