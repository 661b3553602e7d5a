"""adaptrix-ray without a cluster: its command-line options and ``serve run`` args become Ray Serve's settings,
and replicas' metrics merge into one exposition (no Ray needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")

from adaptrix.cli.main import build_parser  # noqa: E402
from adaptrix.plugins.host import PluginHost, get_host, set_host  # noqa: E402


@pytest.fixture
def with_plugin():
    """The process-wide host with adaptrix-ray registered, as `pip install adaptrix-ray` would."""
    import adaptrix_ray

    before = get_host()
    host = PluginHost(environ={"ADAPTRIX_LOAD_PLUGINS": ""})
    host.register(adaptrix_ray, "ray", distribution="adaptrix-ray")
    set_host(host)
    yield
    set_host(before)


def _config(argv):
    from adaptrix.serve.options import ServeOptions

    from adaptrix_ray.mode import config_of, selected

    args = build_parser().parse_args(["serve", *argv])
    assert selected(args)
    return config_of(args, ServeOptions(api_key=args.api_key, max_batch=args.max_batch))


def test_replicas_resources_and_budget_reach_ray_serve(with_plugin, tmp_path):
    config = _config(["--replicas", "3", "--threads", "2", "--max-adapters-per-replica", "5", "--api-key", "k3y",
                      "--max-batch", "6", "--adapters-dir", str(tmp_path)])
    options = config.deployment_options()
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert options["max_ongoing_requests"] == 6  # a replica takes what it batches
    assert config.max_adapters_per_replica == 5 and config.serve.api_key == "k3y"
    assert config.engine["threads"] == 2 and "adapters_dir" not in config.engine
    assert config.adapters_dir == str(tmp_path)


def test_autoscaling_and_gpus_pass_through(with_plugin):
    config = _config(["--replicas", "2", "--min-replicas", "1", "--max-replicas", "6",
                      "--target-ongoing-requests", "3", "--device", "cuda"])
    options = config.deployment_options()
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 3.0,
                                             "initial_replicas": 2}
    assert "num_replicas" not in options and options["ray_actor_options"]["num_gpus"] == 1.0


def test_a_relative_adapters_folder_is_made_absolute_for_replicas(with_plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ads").mkdir()
    assert _config(["--replicas", "1", "--adapters-dir", "ads"]).adapters_dir == str(tmp_path / "ads")
    assert _config(["--replicas", "1", "--adapters-dir", "s3://b/ads"]).adapters_dir == "s3://b/ads"


def test_serve_run_args_spell_the_cli_options():
    from adaptrix_ray.config import RayConfigError, from_args

    config = from_args({"model": "m.gguf", "threads": "1", "num_replicas": "2", "adapters_dir": "file:///a",
                        "max_adapters_per_replica": "3", "api_key": "k3y", "enable_adapter_loading": "true",
                        "min_replicas": "1", "max_replicas": "4", "num_gpus": "0.5"})
    assert config.engine == {"model_id": "m.gguf", "threads": 1}
    assert config.serve.enable_adapter_loading and config.serve.adapters_dir == "file:///a"
    assert config.deployment_options()["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4}
    with pytest.raises(RayConfigError, match="unknown option 'replicas'"):
        from_args({"replicas": "2"})
    with pytest.raises(RayConfigError, match="num_replicas='two' is not a whole number"):
        from_args({"num_replicas": "two"})
    with pytest.raises(RayConfigError, match="API key is empty"):
        from_args({"api_key": ""})


def test_replica_metrics_merge_into_one_exposition_labelled_by_replica():
    from prometheus_client.parser import text_string_to_metric_families

    from adaptrix.serve.metrics import Metrics

    from adaptrix_ray.metrics import merge_metrics

    parts = []
    for replica, n in (("r1", 2), ("r2", 3)):
        m = Metrics()
        m.requests.labels("base", "chat", "ok").inc(n)
        parts.append((replica, m.render()[0].decode()))
    merged = merge_metrics(Metrics().render()[0].decode(), parts)
    families = {f.name: f for f in text_string_to_metric_families(merged)}  # parses: one family per name
    samples = {s.labels["replica"]: s.value for s in families["adaptrix_requests"].samples
               if s.name == "adaptrix_requests_total"}
    assert samples == {"r1": 2.0, "r2": 3.0}
    assert merged.count("# TYPE adaptrix_requests_total counter") == 1


def test_the_plugin_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, adaptrix_ray, adaptrix_ray.mode; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
