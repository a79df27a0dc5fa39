"""Caches that cannot lie: a cached pre-training, subset or grid step comes back only from the store it was logged
in, for the same data content and the same code."""

import json
import shutil

import mlflow

from imagenet_transfer import provenance
from imagenet_transfer.pretrain import run_pretrain
from imagenet_transfer.pretrain_config import PretrainConfig


def smoke(source, tmp_path, **overrides) -> PretrainConfig:
    base = dict(
        source=str(source),
        recipe="smoke",
        workers=0,
        device="cpu",
        iterations=2,
        batch_size=8,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    return PretrainConfig(**{**base, **overrides})


def runs_in(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.stage = 'pretrain'", output_format="list"
    )


def test_a_new_tracking_store_gets_the_model_registered_there(tiny_world, tmp_path, monkeypatch, tracking_uri, capsys):
    first = run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-stores"))
    again = run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-stores"))
    assert again["run_id"] == first["run_id"] and "already trained" in capsys.readouterr().out  # same store: reused

    team = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"
    (tmp_path / "team").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team)
    moved = run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-stores"))
    assert "already trained" not in capsys.readouterr().out
    assert [r.info.run_id for r in runs_in(team)] == [moved["run_id"]] and moved["run_id"] != first["run_id"]
    versions = mlflow.MlflowClient().search_model_versions("name = 'small-stores'")
    assert [v.run_id for v in versions] == [moved["run_id"]]  # registered in the new store
    assert mlflow.MlflowClient().get_model_version_by_alias("small-stores", "current").run_id == moved["run_id"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # the first store still reuses its own
    assert (
        run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-stores"))["run_id"] == first["run_id"]
    )


def test_a_deleted_run_is_trained_again(tiny_world, tmp_path, capsys):
    first = run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-deleted"))
    mlflow.MlflowClient().delete_model_version("small-deleted", first["model_version"])
    second = run_pretrain(smoke(tiny_world / "imagenet", tmp_path, model_name="small-deleted"))
    assert second["run_id"] != first["run_id"] and "training again" in capsys.readouterr().out


def changed_world(tiny_world, tmp_path):
    """A copy of the tiny world whose ImageNet part has other content under the same file names (as a newer
    generator would make): one image rewritten, world.json's digests updated."""
    from imagenet_transfer.synthetic.world import _combine

    world = tmp_path / "world-v2"
    shutil.copytree(tiny_world, world)
    image = sorted((world / "imagenet" / "train").rglob("*.JPEG"))[0]
    image.write_bytes(sorted((world / "imagenet" / "train").rglob("*.JPEG"))[1].read_bytes())
    manifest = json.loads((world / "world.json").read_text())
    manifest["files"]["imagenet"]["sha256"] = "0" * 64
    manifest["content_sha256"] = _combine(manifest["files"])
    (world / "world.json").write_text(json.dumps(manifest))
    return world


def test_a_world_with_changed_content_under_the_same_names_is_not_reused(tiny_world, tmp_path, capsys):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    first = run_pretrain(smoke(world / "imagenet", tmp_path, model_name="small-world"))
    shutil.rmtree(world)
    changed_world(tiny_world, tmp_path).rename(world)  # same path, same file names, other content
    second = run_pretrain(smoke(world / "imagenet", tmp_path, model_name="small-world"))
    assert "already trained" not in capsys.readouterr().out and second["run_id"] != first["run_id"]
    tags = [mlflow.get_run(s["run_id"]).data.tags for s in (first, second)]
    assert tags[0]["subset_digest"] == tags[1]["subset_digest"]  # the same file names and labels ...
    assert tags[0]["source_digest"] != tags[1]["source_digest"]  # ... but not the same images


def test_grid_step_keys_follow_the_world_s_content(tiny_world, tmp_path):
    from imagenet_transfer.grid import load_grid
    from imagenet_transfer.grid_plan import make_plan

    grid = load_grid("configs/paper.yaml")
    before = make_plan(grid, smoke=True, only=["E1"], world=tiny_world)
    after = make_plan(grid, smoke=True, only=["E1"], world=changed_world(tiny_world, tmp_path))
    assert [u.subset.digest for u in before.units] == [u.subset.digest for u in after.units]
    assert not {u.subset.key for u in before.units} & {u.subset.key for u in after.units}
    assert not {u.pretrain_key for u in before.units} & {u.pretrain_key for u in after.units}


def test_the_code_version_changes_with_any_source_file(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    shutil.copytree(provenance.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE", package)
    provenance.code_version.cache_clear()
    try:
        before, key = provenance.code_version(), provenance.cache_key("pretrain", {"lr": 0.1}, "digest")
        (package / "engine.py").write_text((package / "engine.py").read_text() + "\n# changed\n")
        provenance.code_version.cache_clear()
        assert provenance.code_version() != before
        assert provenance.cache_key("pretrain", {"lr": 0.1}, "digest") != key
    finally:
        provenance.code_version.cache_clear()
