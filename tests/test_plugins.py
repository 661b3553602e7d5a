"""Plugin discovery, validation, blocking, conflicts and failure isolation."""

from __future__ import annotations

import sys
import warnings

import pytest

from adaptrix import hookimpl
from adaptrix.errors import PluginConfigError, PluginError, PluginUnavailableError
from adaptrix.plugins.host import PluginHost, PluginWarning
from support.fake_dist import entry_points_under, make_dist

FAMILY_PLUGIN = """
from adaptrix import hookimpl

@hookimpl
def families():
    return ["{family}"]

@hookimpl
def detect_family(model_id, config):
    return "{family}" if (config or {{}}).get("model_type") == "{model_type}" else None

@hookimpl
def target_modules(family, config):
    return {targets!r} if family == "{family}" else None
"""


def plugin_source(family="toy", model_type="toy", targets=("q_proj",)):
    return FAMILY_PLUGIN.format(family=family, model_type=model_type, targets=list(targets))


@pytest.fixture
def dists(tmp_path, monkeypatch):
    """Build fake installed distributions under one sys.path entry."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    created_modules = []

    def add(name, entry_points, modules=None):
        make_dist(root, name, entry_points, modules)
        created_modules.extend(modules or {})
        return root

    yield add
    for mod in created_modules:
        sys.modules.pop(mod, None)


def load(root, environ=None, strict=False):
    host = PluginHost(environ=environ or {}, strict=strict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host.load_entry_points(entry_points_under(root))
    return host, [w for w in caught if issubclass(w.category, PluginWarning)]


def test_entry_point_plugin_is_discovered_with_its_distribution(dists):
    root = dists("adaptrix-toy", {"toy": "toy_plugin"}, {"toy_plugin": plugin_source()})
    host, warned = load(root)
    rec = host.record("toy")
    assert (rec.status, rec.distribution, rec.version, rec.entry_point) == ("ok", "adaptrix-toy", "1.0.0", "toy_plugin")
    assert rec.families == ("toy",)
    assert set(rec.hooks) == {"families", "detect_family", "target_modules"}
    assert host.families() == {"toy": "toy"}
    assert host.call_first("detect_family", model_id="x", config={"model_type": "toy"}) == ("toy", "toy")
    assert not warned


def test_import_error_is_recorded_and_other_plugins_still_load(dists):
    dists("adaptrix-broken", {"broken": "broken_plugin"}, {"broken_plugin": "import does_not_exist_anywhere\n"})
    root = dists("adaptrix-toy", {"toy": "toy_plugin"}, {"toy_plugin": plugin_source()})
    host, warned = load(root)
    broken = host.record("broken")
    assert broken.status == "failed"
    assert "ModuleNotFoundError" in broken.error and "does_not_exist_anywhere" in broken.error
    assert host.record("toy").status == "ok"
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "broken" in message and "adaptrix-broken" in message and "1.0.0" in message
    assert "does_not_exist_anywhere" in message


def test_hookimpl_with_wrong_arguments_fails_validation(dists):
    bad = "from adaptrix import hookimpl\n\n@hookimpl\ndef detect_family(model, cfg, extra):\n    return None\n"
    root = dists("adaptrix-bad", {"bad": "bad_args_plugin"}, {"bad_args_plugin": bad})
    host, _ = load(root)
    rec = host.record("bad")
    assert rec.status == "failed"
    assert "detect_family" in rec.error and "extra" in rec.error
    assert host.pm.get_plugin("bad") is None  # nothing of it stays registered


def test_hookimpl_for_an_unknown_hook_fails_validation(dists):
    typo = "from adaptrix import hookimpl\n\n@hookimpl\ndef detect_famly(model_id, config):\n    return 'x'\n"
    root = dists("adaptrix-typo", {"typo": "typo_plugin"}, {"typo_plugin": typo})
    host, _ = load(root)
    rec = host.record("typo")
    assert rec.status == "failed"
    assert "unknown hook 'detect_famly'" in rec.error and "detect_family" in rec.error
    assert host.pm.get_plugin("typo") is None


def test_families_hook_returning_garbage_fails_validation(dists):
    src = "from adaptrix import hookimpl\n\n@hookimpl\ndef families():\n    return 'qwen'\n"
    root = dists("adaptrix-odd", {"odd": "odd_plugin"}, {"odd_plugin": src})
    host, _ = load(root)
    assert host.record("odd").status == "failed"
    assert "families() must return a list" in host.record("odd").error


def test_strict_mode_raises_with_the_original_error(dists):
    root = dists("adaptrix-broken", {"broken": "broken_plugin2"}, {"broken_plugin2": "raise RuntimeError('boom')\n"})
    with pytest.raises(PluginError, match="broken.*boom") as info:
        load(root, strict=True)
    assert isinstance(info.value.__cause__, RuntimeError)
    host = PluginHost(environ={"ADAPTRIX_STRICT_PLUGINS": "1"})
    assert host.strict


def test_disable_blocks_and_load_only_disables(dists):
    dists("adaptrix-a", {"a": "a_plugin"}, {"a_plugin": plugin_source("fa", "ta")})
    root = dists("adaptrix-b", {"b": "b_plugin"}, {"b_plugin": plugin_source("fb", "tb")})
    host, _ = load(root, {"ADAPTRIX_DISABLE_PLUGINS": "a"})
    assert host.record("a").status == "blocked" and host.record("b").status == "ok"
    assert "a_plugin" not in sys.modules  # a blocked plugin is never imported
    host, _ = load(root, {"ADAPTRIX_LOAD_PLUGINS": "a"})
    assert host.record("a").status == "ok" and host.record("b").status == "disabled"
    host, _ = load(root, {"ADAPTRIX_LOAD_PLUGINS": ""})
    assert {r.status for r in host.records()} == {"disabled"}
    assert host.families() == {}


@pytest.mark.parametrize("var", ["ADAPTRIX_DISABLE_PLUGINS", "ADAPTRIX_LOAD_PLUGINS"])
def test_unknown_plugin_name_in_environment_is_an_error(dists, var):
    root = dists("adaptrix-a", {"a": "a_plugin3"}, {"a_plugin3": plugin_source()})
    with pytest.raises(PluginConfigError, match=rf"{var} names unknown plugin\(s\) nope; installed plugins are: a"):
        load(root, {var: "a,nope"})


def test_two_plugins_claiming_one_family_is_a_reported_conflict_with_a_fixed_winner(dists):
    dists("adaptrix-zeta", {"zeta": "zeta_plugin"}, {"zeta_plugin": plugin_source("same", "m", ["z_proj"])})
    root = dists("adaptrix-alpha", {"alpha": "alpha_plugin"}, {"alpha_plugin": plugin_source("same", "m", ["a_proj"])})
    host, _ = load(root)
    assert host.owner("same") == "alpha"
    assert host.call_family("target_modules", "same", config={}) == (["a_proj"], "alpha")
    for name in ("alpha", "zeta"):
        assert any("'alpha' wins" in c for c in host.record(name).conflicts)
    # Blocking the winner hands the family to the other plugin.
    host, _ = load(root, {"ADAPTRIX_DISABLE_PLUGINS": "alpha"})
    assert host.call_family("target_modules", "same", config={}) == (["z_proj"], "zeta")
    assert host.record("zeta").conflicts == ()


def test_asking_for_a_family_whose_plugin_failed_carries_the_failure(dists):
    root = dists("adaptrix-qwenish", {"qwenish": "qwenish_plugin"}, {"qwenish_plugin": "raise ImportError('no qwen here')\n"})
    host, _ = load(root)
    with pytest.raises(PluginUnavailableError, match="qwenish.*failed.*no qwen here") as info:
        host.owner("qwenish")
    assert isinstance(info.value.original, ImportError)
    with pytest.raises(PluginUnavailableError, match="no installed plugin provides family 'nothing'"):
        host.owner("nothing")


def test_plugin_object_registered_by_hand_without_installing():
    class Toy:
        @hookimpl
        def families(self):
            return ["handmade"]

        @hookimpl
        def target_modules(self, family, config):
            return ["w"] if family == "handmade" else None

    host = PluginHost(environ={})
    rec = host.register(Toy(), "handmade")
    assert rec.status == "ok"
    assert host.call_family("target_modules", "handmade", config=None) == (["w"], "handmade")


def test_exception_inside_a_hook_names_plugin_and_hook():
    class Exploding:
        @hookimpl
        def detect_family(self, model_id, config):
            raise ZeroDivisionError("bad maths")

    host = PluginHost(environ={})
    host.register(Exploding(), "exploding")
    with pytest.raises(PluginError, match="plugin 'exploding' raised in hook detect_family: ZeroDivisionError: bad maths"):
        host.call_first("detect_family", model_id="m", config={})


SHIPPED = ("deepseek", "gemma", "generic", "llama", "mistral", "phi", "qwen")

#: A plugin of another kind (e.g. an execution backend) installed next to the families:
#: it implements an adaptrix hook but provides no family.
NON_FAMILY_PLUGIN = "from adaptrix import hookimpl\n\n@hookimpl\ndef families():\n    return []\n"


@pytest.fixture(params=["shipped only", "with another adaptrix plugin"])
def installed_host(request, dists):
    """The real installed plugins, alone and with an extra non-family plugin in the entry-point group."""
    if request.param != "shipped only":
        dists("adaptrix-otherkind", {"otherkind": "otherkind_plugin"}, {"otherkind_plugin": NON_FAMILY_PLUGIN})
    host = PluginHost(environ={}, strict=True)
    host.load_entry_points()
    return host


def test_installed_family_plugins_all_load_cleanly(installed_host):
    families = installed_host.families()
    for family in SHIPPED:
        assert families[family] == family
    assert all(r.status == "ok" for r in installed_host.records())
    assert all(installed_host.record(f).fallback_hooks == () for f in SHIPPED)


def test_families_hook_answers_once_for_every_shipped_family(installed_host):
    answers = sorted(f for fams in installed_host.pm.hook.families() for f in fams)
    assert set(SHIPPED) <= set(answers)
    assert len(answers) == len(set(answers)), "a family is listed by two plugins"


def test_a_plugin_without_family_hooks_is_tolerated_and_never_answers_for_a_family(dists):
    root = dists("adaptrix-otherkind", {"otherkind": "otherkind_plugin"}, {"otherkind_plugin": NON_FAMILY_PLUGIN})
    host, warned = load(root)
    rec = host.record("otherkind")
    assert (rec.status, rec.families, rec.fallback_hooks) == ("ok", (), ())
    assert not warned and host.families() == {}


def test_minimal_plugin_owns_what_it_detects_and_the_core_fills_in_the_rest(dists):
    src = (
        "from adaptrix import hookimpl\n\n"
        "@hookimpl\ndef detect_family(config):\n"
        "    return 'mini' if (config or {}).get('model_type') == 'mini' else None\n"
    )
    root = dists("adaptrix-mini", {"mini": "mini_plugin"}, {"mini_plugin": src})
    host, _ = load(root, strict=True)
    rec = host.record("mini")
    assert rec.fallback_hooks == ("load_model", "default_generation_config", "target_modules")
    with pytest.raises(PluginUnavailableError, match="no installed plugin provides family 'mini'"):
        host.owner("mini")  # nothing declared and nothing detected yet
    assert host.detect("m", {"model_type": "mini"}) == ("mini", "mini")
    assert host.owner("mini") == "mini" and host.families() == {"mini": "mini"}
    assert host.call_family("target_modules", "mini", config={}) == (["all-linear"], "mini")
    gen, plugin = host.call_family("default_generation_config", "mini", config={"max_position_embeddings": 77})
    assert (plugin, gen.context_length, gen.temperature) == ("mini", 77, None)


def test_only_the_owner_is_called_for_its_family(dists):
    """No plugin guards on the family name: the host never calls another plugin's family hook."""
    dists("adaptrix-a", {"a": "a_plugin4"}, {"a_plugin4": plugin_source("fa", "ta", ["a_proj"])})
    greedy = (
        "from adaptrix import hookimpl\n\n"
        "@hookimpl\ndef detect_family(config):\n"
        "    return 'fb' if (config or {}).get('model_type') == 'tb' else None\n\n"
        "@hookimpl\ndef target_modules(family):\n    return ['b_proj']\n"
    )
    root = dists("adaptrix-b", {"b": "b_plugin4"}, {"b_plugin4": greedy})
    host, _ = load(root, strict=True)
    assert host.detect("m", {"model_type": "tb"}) == ("fb", "b")
    assert host.call_family("target_modules", "fa", config={}) == (["a_proj"], "a")
    assert host.call_family("target_modules", "fb", config={}) == (["b_proj"], "b")


def test_a_detection_that_loses_a_conflict_is_skipped(dists):
    """A plugin answering a family another plugin owns does not take it over."""
    thief = (
        "from adaptrix import hookimpl\n\n"
        "@hookimpl(tryfirst=True)\ndef detect_family(config):\n    return 'fa'\n"
    )
    dists("adaptrix-a", {"a": "a_plugin5"}, {"a_plugin5": plugin_source("fa", "ta", ["a_proj"])})
    root = dists("adaptrix-thief", {"thief": "thief_plugin"}, {"thief_plugin": thief})
    host, _ = load(root, strict=True)
    assert host.detect("m", {"model_type": "ta"}) == ("fa", "a")
    assert any("thief" in c for c in host.record("a").conflicts)
    assert any("'a' wins" in c for c in host.record("thief").conflicts)


#: family -> (max_new_tokens, temperature, top_p) its plugin recommends.
FAMILY_DEFAULTS = {
    "qwen": (1024, 0.7, 0.9),
    "phi": (512, 0.7, 0.85),
    "llama": (512, 0.6, 0.9),
    "mistral": (512, 0.7, 0.95),
    "gemma": (512, 1.0, 0.95),
    "deepseek": (1024, 0.6, 0.95),
    "generic": (None, None, None),
}


@pytest.mark.parametrize("family", sorted(FAMILY_DEFAULTS))
def test_default_generation_config_per_family_reads_context_from_config(family, installed_host):
    host = installed_host
    cfg, plugin = host.call_family("default_generation_config", family, config={"max_position_embeddings": 4321})
    assert plugin == family
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_p) == FAMILY_DEFAULTS[family]
    assert cfg.context_length == 4321
    # Another family's plugin never answers for this one.
    other = "qwen" if family != "qwen" else "phi"
    assert host.call_family("default_generation_config", other, config={})[1] == other


# -- pluggy calls the hooks: firstresult, hookwrappers, tracing and isolation ---------------------------------------


class Toy:
    """A family plugin registered by hand: detects ``toy`` models, targets ``q_proj``."""

    @hookimpl
    def detect_family(self, config):
        return "toy" if (config or {}).get("model_type") == "toy" else None

    @hookimpl
    def target_modules(self):
        return ["q_proj"]


class Watcher:
    """Hookwrappers only: they see each answer and may change it (pluggy's ``wrapper=True``)."""

    def __init__(self):
        self.seen = []

    @hookimpl(wrapper=True)
    def detect_family(self, model_id, config):
        family = yield
        self.seen.append(("detect_family", family))
        return None if model_id == "vetoed" else family

    @hookimpl(wrapper=True)
    def target_modules(self, family, config):
        targets = yield
        self.seen.append(("target_modules", targets))
        return targets + ["o_proj"]


def test_a_hookwrapper_sees_and_changes_firstresult_answers():
    host = PluginHost(environ={}, strict=True)
    host.register(Toy(), "toy")
    watcher = Watcher()
    rec = host.register(watcher, "watcher")
    assert rec.status == "ok" and rec.fallback_hooks == ()  # wrapping is not providing a family
    assert host.detect("m", {"model_type": "toy"}) == ("toy", "toy")  # the implementation's plugin answered
    assert host.detect("vetoed", {"model_type": "toy"}) == (None, None)
    # The owner-only call keeps the wrapper: it sees the owner's answer and extends it.
    assert host.call_family("target_modules", "toy", config={}) == (["q_proj", "o_proj"], "toy")
    assert watcher.seen == [("detect_family", "toy"), ("detect_family", "toy"), ("target_modules", ["q_proj"])]


def test_hook_calls_are_visible_to_pluggy_tracing_and_monitoring():
    host = PluginHost(environ={}, strict=True)
    host.register(Toy(), "toy")
    calls, traced = [], []
    undo = host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, sorted(i.plugin_name for i in impls), kwargs)),
        lambda outcome, name, impls, kwargs: calls.append(("->", outcome.get_result())),
    )
    host.detect("m", {"model_type": "toy"})
    host.call_family("target_modules", "toy", config={"a": 1})
    host.call_all("caches")
    undo()
    assert calls == [
        ("detect_family", ["toy"], {"model_id": "m", "config": {"model_type": "toy"}}), ("->", "toy"),
        ("target_modules", ["toy"], {"family": "toy", "config": {"a": 1}}), ("->", ["q_proj"]),
        ("caches", [], {}), ("->", []),
    ]
    host.pm.trace.root.setwriter(traced.append)
    undo = host.pm.enable_tracing()
    host.call_first("detect_family", model_id="m", config=None)
    undo()
    assert any("detect_family" in line for line in traced)
    with pytest.raises(PluginError, match="'caches' is not a firstresult hook"):
        host.call_first("caches")


class Converters:
    def __init__(self, answer):
        self.answer = answer

    @hookimpl
    def caches(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_plugin_raising_in_an_all_plugins_hook_is_skipped_and_the_others_answer():
    host = PluginHost(environ={})
    host.register(Converters(["b"]), "b")
    host.register(Converters(ValueError("disk on fire")), "broken")
    host.register(Converters(["a"]), "a")  # registered last: answers first
    with pytest.warns(PluginWarning, match="plugin 'broken' raised in hook caches: ValueError: disk on fire; its answer is skipped"):
        assert host.call_all("caches") == [("a", ["a"]), ("b", ["b"])]
    host.strict = True
    with pytest.raises(PluginError, match="plugin 'broken' raised in hook caches: ValueError: disk on fire"):
        host.call_all("caches")


def test_a_hookwrapper_on_an_all_plugins_hook_sees_the_answers_and_its_additions_are_named_after_it():
    class Extra:
        def __init__(self):
            self.seen = []

        @hookimpl(wrapper=True)
        def caches(self):
            answers = yield
            self.seen.append(answers)
            return answers + [["extra"]]

    host = PluginHost(environ={})
    extra = Extra()
    host.register(extra, "extra")
    host.register(Converters(ValueError("boom")), "broken")
    host.register(Converters(["a"]), "a")
    with pytest.warns(PluginWarning, match="plugin 'broken'"):
        assert host.call_all("caches") == [("a", ["a"]), ("extra", ["extra"])]
    assert extra.seen == [[["a"]]]  # the broken plugin's answer is skipped before the wrapper sees the list


def test_errors_raised_by_a_family_owner_name_plugin_and_hook():
    class Owner(Toy):
        @hookimpl
        def default_generation_config(self, config):
            raise KeyError("temperature")

    host = PluginHost(environ={})
    host.register(Owner(), "toy")
    host.detect("m", {"model_type": "toy"})
    with pytest.raises(PluginError, match="plugin 'toy' raised in hook default_generation_config: KeyError"):
        host.call_family("default_generation_config", "toy", config={})
    # A direct pluggy call names them too.
    with pytest.raises(PluginError, match="plugin 'toy' raised in hook default_generation_config"):
        host.pm.hook.default_generation_config(family="toy", config={})
