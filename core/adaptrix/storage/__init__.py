"""Files adaptrix writes: atomic writes and free-space checks (:mod:`.files`), and the
caches under ``~/.cache/adaptrix`` with their budgets (:mod:`.caches`)."""
