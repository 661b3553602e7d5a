"""Other ways of running ``adaptrix serve``, added by plugins (the ``serve_modes`` hook).

A :class:`ServeMode` adds its own options to ``adaptrix serve`` (``--replicas N`` for ``adaptrix-ray``) and,
when a command line uses them, runs the server its own way with the :class:`~adaptrix.serve.options.ServeOptions`
the core parsed (API key, limits, CORS, adapter loading...), so every mode serves the same API. Nothing here
imports what a mode runs on: a mode imports it inside ``run``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import attrs

#: Options of modes that are not installed, and the distribution that brings each: ``adaptrix serve`` answers
#: them with "pip install ..." rather than argparse's "unrecognized arguments". Only a hint: the core runs no
#: code of theirs.
KNOWN_MODE_FLAGS: dict[str, str] = {
    "--replicas": "adaptrix-ray",
    "--ray-address": "adaptrix-ray",
    "--max-adapters-per-replica": "adaptrix-ray",
}


@attrs.frozen
class ServeMode:
    """One way of serving, from a plugin.

    ``add_arguments(group)`` adds the mode's options to an argparse group of ``adaptrix serve`` (named after
    ``name``); ``selected(args)`` says whether a parsed command line asks for this mode (``--replicas`` given);
    ``run(args, options)`` serves until stopped and returns the exit status. ``args`` holds every ``serve``
    option (``--model``, ``--adapters-dir``, the mode's own); ``options`` the server settings checked by the core.
    """

    name: str
    summary: str
    add_arguments: Callable[[argparse._ArgumentGroup], None]
    selected: Callable[[argparse.Namespace], bool]
    run: Callable[[argparse.Namespace, Any], int]
