"""SUN-CLS: scene classification on SUN397's official partitions, by a linear classifier or by fine-tuning.

    imagenet-transfer transfer run sun397 --backbone random:small                       # linear protocol
    imagenet-transfer transfer run sun397 --backbone models:/small-full@current --set protocol=finetune
    imagenet-transfer transfer run sun397 --backbone ... --set data=/data/SUN397 --set partitions=1,2,3,4,5,6,7,8,9,10
    mlflow run . -e transfer_sun397 --env-manager local -P backbone=models:/small-full@current

    from imagenet_transfer.transfer import sun397
    result = sun397.run(net, info, sun397.Config(), device="cpu")   # net, info = common.resolve_backbone(...)
    result.metrics["sun397_acc"]                                     # mean per-class accuracy, %, over partitions

Input: a backbone and a SUN397 root (`SUN397/<letter>/<class>/*.jpg` with `Partitions/` beside or inside it;
default: the embedded world). Each partition gives its Training_NN list (50 images per class on real data) and
its Testing_NN list. A validation split is carved from each partition's training images (`val_fraction` of each
class, seeded by `seed` and the partition: `common.carve_validation`); every choice below is made on it, and the
test list is scored once for the chosen configuration. With `evaluate_on="val"` (what a budget study optimises)
the Testing lists are never read: `eval_fraction` of each class's training images is held out and scored instead,
and the validation split for the choices is carved from the rest.

Protocols:
  linear    frozen features (eval view, cached on disk: `transfer.features`) of each layer among pool5, fc6, fc7
            that the backbone has (`layers` to restrict; ResNets have only pool5), a multinomial logistic regression
            per layer (`transfer.linear`) whose L2 strength is chosen on validation, then refitted on
            train + validation and scored on test. The layer with the best validation accuracy is the one
            reported as `sun397_acc`; every layer's test accuracy is logged too, to show where the transferable
            features live (fc7 of a net trained on objects can be worse for scenes than pool5).
  finetune  the paper's protocol: the whole backbone with a new num-scenes head (N(0, 0.01) init), SGD with
            momentum, the head at `lr`, the pre-trained layers at `trunk_lr` (10x lower, as in Caffe
            fine-tuning), cosine decay, the paper's augmentation (resize, random crop, mirror); after each epoch
            the validation accuracy is measured and the weights of the best epoch are the ones tested.

Output (`Result`), accuracies are mean per-class accuracy in %:
  sun397_acc                 test accuracy of the chosen configuration, mean over the partitions run (with
                             evaluate_on=val: accuracy on the held-out part of the training lists)
  sun397_acc_std             its standard deviation over the partitions (ddof=1; only with several partitions)
  sun397_val_acc             validation accuracy of the chosen configuration (mean over partitions)
  sun397_acc_<layer>         linear: test accuracy of each layer (mean over partitions), `_std` with several
  sun397_partitions, sun397_classes, sun397_train_images, sun397_val_images, sun397_test_images (per partition),
  sun397_missing_images      images listed but absent (tolerated up to `max_missing_fraction`, then dropped)
  sun397_features_images_per_s   linear: extraction speed, when the features were not cached
  tables  sun397_linear.csv (partition, layer, l2, val_acc, test_acc, chosen) or
          sun397_finetune.csv (partition, epoch, train_loss, val_acc, chosen, test_acc on the chosen row)
  figures sun397_layers.png (linear: test accuracy per layer, mean ± std, chosen layer marked) or
          sun397_finetune.png (validation accuracy per epoch, chosen epochs marked)

Features are extracted once per backbone and image list and cached (`transfer.features`), so a second linear run
on the same backbone only fits the classifiers.

Files: `config.py` (Config), `data.py` (partitions as tables of entry, path, label, role), `model.py` (layers read,
the fine-tuning network), `engine.py` (both protocols, summary, run), `figures.py`. Results: bench/README.md.
"""

from imagenet_transfer.transfer.sun397.config import Config
from imagenet_transfer.transfer.sun397.engine import run

__all__ = ["Config", "run"]
