"""Plugin hosting: the hooks a plugin may implement and the host that calls them.

:mod:`.hookspecs` declares the hooks; :mod:`.host` finds plugins through the
``adaptrix`` entry-point group and calls them, isolating a broken one;
:mod:`.fallbacks` answers for families no plugin claims; :mod:`.detection`
names a model's family. What family plugins build on: :mod:`.family`
(claiming a config, layer groups, thinking spans), :mod:`.family_chat` (how a
family's chat behaves on any backend) and :mod:`.family_options` (the extra
``Engine(...)`` arguments a plugin declares).
"""
