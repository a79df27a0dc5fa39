"""Readers of the real on-disk formats of the transfer datasets: no torch training, no MLflow.

    voc      PASCAL VOC 2007 / 2012 (`VOCdevkit/VOC20NN`): VOC_CLASSES, VOC_ACTIONS, read_annotation, read_image_set
    sun397   SUN397 (`SUN397/<letter>/<class>/*.jpg` + `Partitions/`): find_sun397, read_class_names, read_partition

The embedded synthetic world (`imagenet_transfer.synthetic`) writes these same formats, so one reader serves
real and synthetic data. The benchmarks built on them live in `imagenet_transfer.transfer`.
"""
