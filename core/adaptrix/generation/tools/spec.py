"""The tools a request offers and how it lets the model use them, checked once for the library and the server.

:func:`check_tool_use` turns OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` into a
:class:`ToolUse`; anything it cannot serve is a :class:`~adaptrix.errors.ToolError` whose ``param`` names the
field (``tools[0].function.name``), so the server answers 400 naming it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from adaptrix.errors import ToolError

#: OpenAI's rule for a function name.
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("auto", "none", "required")
JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


@attrs.frozen
class ToolSpec:
    """One offered function: its name, description and the JSON Schema of its arguments."""

    name: str
    description: str | None = None
    #: JSON Schema (an object schema) of the arguments, as JSON text (so the record stays hashable).
    parameters_json: str = '{"type": "object", "properties": {}}'

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.parameters_json)

    def as_openai(self) -> dict[str, Any]:
        """``{"type": "function", "function": {...}}``: the form chat templates take as ``tools``."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@attrs.frozen
class ToolUse:
    """The tools of a request and the choice: ``auto`` (the model decides), ``required`` (at least one call)
    or ``function`` (a call to that one function); ``none`` never reaches here (no tools are used)."""

    tools: tuple[ToolSpec, ...]
    choice: str = "auto"
    #: With ``choice == "function"``: the function to call.
    function: str | None = None
    #: Several calls in one answer (``parallel_tool_calls``); ``False``: at most one.
    parallel: bool = True

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call (``required`` or a named function): a grammar enforces it."""
        return self.choice in ("required", "function")

    def offered(self) -> tuple[ToolSpec, ...]:
        """The functions the answer may call: the named one, else all."""
        if self.choice == "function":
            return tuple(t for t in self.tools if t.name == self.function)
        return self.tools


def check_tool_use(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolUse | None:
    """The checked :class:`ToolUse`, or ``None`` when no tool may be called (no tools, or ``tool_choice:
    "none"``). Raises :class:`ToolError` naming the field at fault."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolError(f"'parallel_tool_calls' must be true or false, got {_short(parallel_tool_calls)}",
                        "parallel_tool_calls")
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise ToolError(f"'tool_choice' is {_short(tool_choice)} but no 'tools' are given; offer the "
                            "functions in 'tools'", "tool_choice")
        return None
    if not isinstance(tools, (list, tuple)):
        raise ToolError(f"'tools' must be a list of {{\"type\": \"function\", \"function\": {{...}}}} objects, got "
                        f"{_short(tools)}", "tools")
    specs = tuple(check_tool(t, f"tools[{i}]") for i, t in enumerate(tools))
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ToolError(f"'tools[{i}].function.name' {spec.name!r} is offered twice; give each function once",
                            f"tools[{i}].function.name")
        seen.add(spec.name)
    choice, function = _choice(tool_choice, seen)
    if choice == "none":
        return None
    return ToolUse(specs, choice, function, True if parallel_tool_calls is None else parallel_tool_calls)


def check_tool(tool: Any, param: str) -> ToolSpec:
    """One entry of ``tools``: ``{"type": "function", "function": {"name", "description"?, "parameters"?}}``."""
    if not isinstance(tool, dict):
        raise ToolError(f"'{param}' must be an object {{\"type\": \"function\", \"function\": {{...}}}}, got "
                        f"{_short(tool)}", param)
    if tool.get("type") != "function":
        raise ToolError(f"'{param}.type' must be \"function\" (the only tool type adaptrix serves), got "
                        f"{_short(tool.get('type'))}", f"{param}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ToolError(f"'{param}.function' must be an object with a 'name', got {_short(function)}",
                        f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ToolError(f"'{param}.function.name' must be 1-64 letters, digits, '_' or '-', got {_short(name)}",
                        f"{param}.function.name")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ToolError(f"'{param}.function.description' must be a string, got {_short(description)}",
                        f"{param}.function.description")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    check_parameters(parameters, f"{param}.function.parameters")
    return ToolSpec(name, description, json.dumps(parameters))


def check_parameters(schema: Any, param: str) -> None:
    """A function's ``parameters``: a JSON Schema of an object (``type`` object, ``properties`` schemas,
    ``required`` names)."""
    if not isinstance(schema, dict):
        raise ToolError(f"'{param}' must be a JSON Schema object, got {_short(schema)}", param)
    kind = schema.get("type", "object")
    if kind != "object":
        raise ToolError(f"'{param}.type' must be \"object\" (a function takes named arguments), got {_short(kind)}",
                        f"{param}.type")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise ToolError(f"'{param}.properties' must be an object of schemas, got {_short(properties)}",
                        f"{param}.properties")
    for key, sub in properties.items():
        _check_subschema(sub, f"{param}.properties.{key}")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ToolError(f"'{param}.required' must be a list of property names, got {_short(required)}",
                        f"{param}.required")


def _check_subschema(schema: Any, param: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ToolError(f"'{param}' must be a JSON Schema (an object), got {_short(schema)}", param)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    bad = [k for k in kinds if k not in JSON_TYPES]
    if bad or not isinstance(kind, (str, list, type(None))):
        raise ToolError(f"'{param}.type' must be one of {', '.join(JSON_TYPES)}, got {_short(kind)}", f"{param}.type")
    for key, sub in (schema.get("properties") or {}).items() if isinstance(schema.get("properties"), dict) else ():
        _check_subschema(sub, f"{param}.properties.{key}")
    if isinstance(schema.get("items"), (dict, bool)):
        _check_subschema(schema["items"], f"{param}.items")


def _choice(value: Any, names: set[str]) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in CHOICES:
            raise ToolError(f"'tool_choice' must be one of {', '.join(CHOICES)} or "
                            f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {_short(value)}",
                            "tool_choice")
        return value, None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(value.get("function"), dict):
        raise ToolError(f"'tool_choice' must be a string or {{\"type\": \"function\", \"function\": {{\"name\": "
                        f"...}}}}, got {_short(value)}", "tool_choice")
    name = value["function"].get("name")
    if name not in names:
        raise ToolError(f"'tool_choice.function.name' {_short(name)} is not one of the offered tools "
                        f"({', '.join(sorted(names))}); name a function given in 'tools'", "tool_choice.function.name")
    return "function", name


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
