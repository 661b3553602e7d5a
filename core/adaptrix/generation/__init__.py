"""Generation: from a request to the text it returns, whatever the backend.

A call's arguments (:mod:`.request`) and sampling settings (:mod:`.settings`,
over :mod:`.defaults`); conversations and the prompt they format
(:mod:`.conversation`, :mod:`.chat_template`); a request resolved and
formatted for one model (:mod:`.preparer`); the prepared request and its
result (:mod:`.result`); the text pipeline that turns ids into returned text,
whole or streamed (:mod:`.text`); what step-level decoders share
(:mod:`.steps`); the lease that gives one caller the model at a time
(:mod:`.lease`); and tool calling, each family's format of tool calls
(:mod:`.tools`).
"""
