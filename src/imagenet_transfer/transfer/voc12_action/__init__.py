"""PASCAL-ACT-CLS: classify the action of each given person box of VOC2012 action by fine-tuning a backbone.

    imagenet-transfer transfer run voc12_action --backbone models:/small-full@current
    imagenet-transfer transfer run voc12_action --backbone random:small --set context=true --set holdout=0.2
    mlflow run . -e transfer_voc12_action --env-manager local -P backbone=models:/small-full@current

    from imagenet_transfer.transfer import voc12_action
    result = voc12_action.run(net, info, voc12_action.Config(), device="cpu")   # net, info = resolve_backbone(...)
    result.metrics["voc12_action_map"]                                          # mean AP over the 10 actions, %

Input: a `VOCdevkit/VOC2012` folder (`Config.data`; "" = the embedded world's): `ImageSets/Action/{train,val}.txt`
(image ids), `<action>_{train,val}.txt` (`<id> <object> <flag>`, checked against the XML when present),
`Annotations/<id>.xml` (person objects with an `<actions>` element), `JPEGImages/<id>.jpg`.
Output (`Result`): metrics `voc12_action_map` and `voc12_action_ap_<action>` (%, val), `train_persons`,
`val_persons`, `train_loss`, `train_seconds` (+ `holdout_map`, `holdout_persons`, `best_epoch` with
`Config.holdout`); figure `action_ap.png`; tables `voc12_action_ap.csv` (AP and positives per action) and
`voc12_action_val_scores.csv` (every val person's 10 scores and labels, to re-check the AP with another
implementation).

Protocol (PAPER.md, the paper's): every person with an `<actions>` element in the listed images is one sample;
its box (enlarged by `margin` of its side on each side, clipped to the image) is warped to the backbone's
resolution; with `context` the whole image, warped likewise, goes through the same trunk as a second stream and
the two feature vectors are concatenated. Network: the backbone's trunk + fc6/fc7 (pool5 for the ResNets, which
have no fc layers) + a new linear head; SGD with momentum, the head's lr `head_lr_mult` times the backbone's,
cosine decay, augmentation = mirror (crop and context flipped together) + box jitter. Trained on `train`;
scored once on `val` (the real VOC2012 test labels are not public; the paper reported val). Nothing is
selected on val: with `holdout` > 0 a fraction of the train images is held out and the epoch with the best
held-out mAP is kept (early stopping), otherwise the last epoch is. With `evaluate_on="val"` (what a budget study
optimises) the val split is never read: `eval_fraction` of the train images (all persons of an image on one side)
is held out, the rest trains, and the held-out persons are the ones scored (`val_persons` counts them).

Loss (`Config.loss`): "softmax" (default): an 11-way softmax, the 10 actions + "none of them" (persons whose
only action is VOC's "other"), the target spread evenly over a person's positive actions (real VOC2012 has a
few persons with several); scores are the 10 action probabilities. Chosen because nearly every person does
exactly one action, and because it trained better than "bce" on the embedded world. "bce", one sigmoid per
action (summed over the actions, averaged over persons), is the multi-label alternative that matches the devkit's
one-binary-task-per-action view.

Metric: `transfer.metrics.average_precision`, the VOC2012 action devkit's AP (all recall steps, not VOC07's 11
points; tied scores form one threshold). An action with no positive among the val persons has no AP (NaN): it is
left out of `voc12_action_map` and of the metrics, and shown as such in the table and figure.

Files: `config.py` (Config), `data.py` (persons, crops, splits), `model.py` (ActionNet, loss and scores),
`engine.py` (run, predict), `figures.py` (AP figure and tables). Runtimes and results: bench/README.md.
"""

from imagenet_transfer.transfer.voc12_action.config import Config
from imagenet_transfer.transfer.voc12_action.engine import run

__all__ = ["Config", "run"]
