"""A registered backbone as an MLflow pyfunc model from code: nothing in it is unpickled to be used.

`tracking.log_backbone` logs this file as the model's code (`mlflow.pyfunc.log_model(python_model=<this file>,
artifacts={"state_dict": state_dict.pt, "backbone_json": backbone.json})`). Loading the model

    mlflow.pyfunc.load_model("models:/small-full@current").predict(batch)

runs this file: `load_context` rebuilds the network with `models.rebuild` from `backbone.json` and the weights read
with `torch.load(weights_only=True)`. `predict` takes a float32 batch N×3×H×W, normalised as the backbone expects
(`data.ARCH_NORMALISATION`), and returns the backbone's deepest vector features (fc7; pool5 for ResNets) as an N×D
float32 array; `params={"layer": "pool5"}` picks another layer (`conv5`, `pool5`, `fc6`, `fc7`). The platform itself
reads the same two files with `tracking.load_backbone`.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

STATE_DICT, BACKBONE_JSON = "state_dict", "backbone_json"  # the names of the model's artifacts


class BackboneFeatures(PythonModel):
    """Features of a backbone rebuilt from its weights (weights_only) and config; no pickled object."""

    def load_context(self, context) -> None:
        from imagenet_transfer.models import rebuild

        self.info = json.loads(Path(context.artifacts[BACKBONE_JSON]).read_text())
        weights = torch.load(context.artifacts[STATE_DICT], map_location="cpu", weights_only=True)
        self.net = rebuild(self.info["backbone"], weights).eval()

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        layer = (params or {}).get("layer") or self.net.feature_layers[-1]
        batch = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.net.features(batch, (layer,))[layer].numpy()


mlflow.models.set_model(BackboneFeatures())
