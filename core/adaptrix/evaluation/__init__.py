"""Measuring models and adapters: ``adaptrix eval`` and ``adaptrix compare``.

One module per job:

- :mod:`~adaptrix.evaluation.tasks`: a task's items from a JSONL file, few-shot prompts;
- :mod:`~adaptrix.evaluation.metrics`: how an output is scored (exact, number, contains, choice, code);
- :mod:`~adaptrix.evaluation.suites`: the built-in tasks by name (``math``, ``code``, ``chat``);
- :mod:`~adaptrix.evaluation.sandbox`: running generated code in a contained subprocess;
- :mod:`~adaptrix.evaluation.stats`: Wilson intervals and the exact McNemar test;
- :mod:`~adaptrix.evaluation.cache`: one cached result per (model, adapter, backend, settings, item);
- :mod:`~adaptrix.evaluation.matrix`: the cells of a comparison (model, adapter, backend, task) and their results;
- :mod:`~adaptrix.evaluation.runner`: running the cells through the engine (the adapters of a model together);
- :mod:`~adaptrix.evaluation.report`: the terminal table, JSON, CSV, the plot and ``report.html``.
"""
