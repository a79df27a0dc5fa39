"""A subset manifest logged as an MLflow dataset input: name, digest, source, tags, schema and profile, and the
same schema/profile JSON that MLflow's own `from_pandas` dataset gives the frame."""

import json
import uuid
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

from imagenet_transfer import tracking
from imagenet_transfer.catalog import demo_catalog
from imagenet_transfer.subsets import build_subset, preset


def manifest(kind: str) -> pd.DataFrame:
    """Small manifests with the column dtypes the project writes and reads back (see `subsets.build_subset`)."""
    if kind == "built":  # what build_subset makes: str path, categorical wnid/label_wnid/split, int64 label
        return build_subset(demo_catalog(), preset("e1-5")).manifest
    if kind == "strings":  # a manifest read back from parquet by other tools: plain str columns
        return pd.DataFrame(
            {
                "path": ["a/n1_0.JPEG", "a/n2_0.JPEG", "v/n1_1.JPEG"],
                "wnid": ["n1", "n2", "n1"],
                "label": [0, 1, 0],
                "label_wnid": ["n1", "n2", "n1"],
                "split": ["train", "train", "val"],
            }
        )
    if kind == "objects-missing":  # object columns, missing values, narrower integer labels
        return pd.DataFrame(
            {
                "path": pd.Series(["a/x.JPEG", None, "b/y.JPEG"], dtype=object),
                "wnid": pd.Categorical(["n1", None, "n2"]),
                "label": np.array([3, 1, 2], dtype=np.int32),
                "label_wnid": pd.array(["n1", None, "n2"], dtype="string"),
                "split": pd.Categorical(["train", "val", "train"], categories=["train", "val"]),
            }
        )
    if kind == "other-types":  # dtypes a manifest does not have today
        return pd.DataFrame(
            {
                "path": ["a", "b"],
                "label": pd.array([1, None], dtype="Int64"),
                "weight": np.array([0.5, np.nan]),
                "flag": [True, False],
                "code": pd.Categorical([7, 9]),
                "seen": pd.to_datetime(["2024-01-01", None]),
            }
        )
    if kind == "untypable":  # a column MLflow cannot type: no schema, as from_pandas gives
        return pd.DataFrame({"path": ["a", "b"], "label": [0, 1], "odd": pd.Series([1, "x"], dtype=object)})
    raise ValueError(kind)


def logged(frame: pd.DataFrame, **overrides):
    """Log `frame` in a subset run; return the run's one dataset input and the arguments used."""
    args = {
        "name": "e1-5",
        "source": "/data/subsets/e1-5",
        "digest": uuid.uuid4().hex[:16],  # datasets are shared
        "context": "subset",
        "tags": {"spec_digest": "0123abcd"},  # per experiment by name + digest
    } | overrides
    with tracking.start_run("subset") as run:
        tracking.log_dataset(frame, **args)
    (dataset_input,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    return dataset_input, args


def test_the_dataset_input_has_the_name_digest_source_tags_schema_and_rows():
    frame = manifest("built")
    dataset_input, args = logged(frame)
    dataset = dataset_input.dataset
    assert (dataset.name, dataset.digest) == ("e1-5", args["digest"])
    assert dataset.source_type == "local" and json.loads(dataset.source) == {"uri": "/data/subsets/e1-5"}
    assert {t.key: t.value for t in dataset_input.tags} == {"spec_digest": "0123abcd", "mlflow.data.context": "subset"}
    columns = json.loads(dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"], c["required"]) for c in columns] == [
        ("path", "string", True),
        ("wnid", "string", True),
        ("label", "long", True),
        ("label_wnid", "string", True),
        ("split", "string", True),
    ]
    assert mlflow.types.Schema.from_json(json.dumps(columns)).input_names() == list(frame.columns)
    assert json.loads(dataset.profile) == {"num_rows": len(frame), "num_elements": 5 * len(frame)}
    assert len(frame) == 1000 * 5 + 1000 * 3  # 5 train + all 3 val images of every demo class


@pytest.mark.parametrize("kind", ["built", "strings", "objects-missing", "other-types", "untypable"])
def test_schema_profile_and_source_are_what_mlflow_from_pandas_gives(kind):
    frame = manifest(kind)
    dataset_input, args = logged(frame, source="/data/subsets/x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = mlflow.data.from_pandas(
            frame, source="/data/subsets/x", name=args["name"], digest=args["digest"], targets="label"
        ).to_dict()
    dataset = dataset_input.dataset
    got = {
        "name": dataset.name,
        "digest": dataset.digest,
        "source": dataset.source,
        "source_type": dataset.source_type,
        "schema": dataset.schema,
        "profile": dataset.profile,
    }
    assert got == expected
    assert (dataset.schema is None) == (kind == "untypable")


def test_a_uri_source_keeps_mlflows_source_type():
    frame = manifest("strings")
    dataset_input, _ = logged(frame, source="file:///data/subsets/s", context="pretrain", tags=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = mlflow.data.from_pandas(frame, source="file:///data/subsets/s", digest="-")
    assert dataset_input.dataset.source_type == expected.source._get_source_type()
    assert dataset_input.dataset.source == expected.source.to_json()
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "pretrain"}


def test_a_manifest_without_label_is_refused_as_from_pandas_refuses_it():
    with pytest.raises(mlflow.exceptions.MlflowException, match="targets column 'label'"):
        logged(manifest("strings").drop(columns="label"))


def test_types_are_not_read_value_by_value(monkeypatch):
    """A manifest's string columns are typed from one value, not every row (what made 1.28M rows take ~14 s)."""
    import mlflow.types.utils as type_utils

    seen = []
    infer = type_utils._infer_colspec_type
    monkeypatch.setattr(type_utils, "_infer_colspec_type", lambda data: seen.append(len(data)) or infer(data))
    logged(manifest("built"))
    assert seen and max(seen) < 100  # a value or a few, never a column of 8000 rows
