"""E4 probes: coarse→fine (kNN and linear probe on fine classes) and fine→coarse (predictions in a coarse space).

    imagenet-transfer transfer run probe --backbone models:/small-e3-127@current     # (a) on the fine classes
    imagenet-transfer transfer run probe --backbone models:/small-full@current       # (a) and (b)
    imagenet-transfer transfer run probe --backbone random:small                     # (a) baseline; (b) skipped
    mlflow run . -e probe --env-manager local -P backbone=models:/small-full@current

    from imagenet_transfer.transfer import probe
    result = probe.run(net, info, probe.Config(), device="cpu")   # net, info = common.resolve_backbone(...)
    result.metrics["probe_knn_top1"]                              # %, on the source's val images

Input: a backbone and an ImageNet-style source (`train/<wnid>/*.JPEG` + `val/`, anything `catalog` reads;
default: the embedded world's `imagenet/`). The evaluation is always on the FINE classes of the source:
`train_per_class` training images per class (seeded sample; 0 = all) are the kNN memory and the linear probe's
training set, the source's val images (`val_per_class` per class; 0 = all) are scored once.

(a) coarse→fine, PAPER.md E4: frozen features (`layer`; default fc7, pool5 for ResNets, which have no fc7) of a
    backbone, typically one pre-trained on coarse labels (e.g. top-down 127), scored on the fine classes:
      probe_knn_top1      k-nearest-neighbour top-1 (%): cosine similarity, the k most similar training images
                          vote, ties between classes broken by their summed similarity; k = `k`, fixed in advance
      probe_linear_top1   linear-probe top-1 (%): multinomial logistic regression on standardised features
                          (`transfer.linear`), L2 chosen on a validation split carved from the training sample
                          (`val_fraction` per class, `common.carve_validation`), refitted on the whole sample,
                          scored once on val
(b) fine→coarse, PAPER.md E4: the backbone's own classifier on the val images, its predicted output label mapped
    to the `coarse_level` label set (e.g. top-down-127) and compared with the image's coarse label:
      probe_coarse_top1   top-1 in the coarse space (%). For a fine-label backbone this is "fine predictions mapped
                          to coarse"; for a backbone trained on that coarse set it is its plain accuracy: run the
                          probe on both and compare their probe_coarse_top1 (same val images, same coarse labels)
      probe_coarse_majority_top1  the same for always answering the most frequent coarse class (the sets are
                          very unbalanced: "mammal" is 218 of the 1000 classes)
    (b) needs `info["label_wnids"]` (output label → wnid, written by pre-training into backbone.json). An output
    wnid maps to: its coarse label when it is an ILSVRC class; itself when it is a label of the coarse set; else
    the coarse label most of the ILSVRC classes below it have (counted in `probe_coarse_mixed_labels`).
Also: probe_fine_classes, probe_train_images, probe_val_images, probe_linear_val_top1, probe_linear_l2, probe_k,
probe_coarse_classes, probe_features_images_per_s (extraction speed, when the features were not cached).
Tables: probe_knn.csv (k, top1), probe_linear.csv (l2, val_top1, chosen), probe_coarse_map.csv (label,
label_wnid, coarse_wnid, rule). Figure: probe_knn.png (kNN top-1 against k, the linear probe as a line; the k
values besides `k` are descriptive, never used to choose anything).

`parts` chooses what runs (knn, linear, coarse); empty = knn and linear, plus coarse when the backbone's
output labels are known. Most of a run is feature extraction, cached for the next run (`transfer.features`).

Files: `config.py` (Config), `data.py` (the sample of the source), `model.py` (the kNN, linear-probe and
fine→coarse heads), `engine.py` (run), `figures.py` (kNN curve). Results: bench/README.md.
"""

from imagenet_transfer.transfer.probe.config import Config
from imagenet_transfer.transfer.probe.engine import run

__all__ = ["Config", "run"]
