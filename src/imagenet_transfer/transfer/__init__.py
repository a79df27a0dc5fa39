"""Transfer benchmarks (PASCAL-DET, PASCAL-ACT-CLS, SUN-CLS) and the readers of their datasets.

`voc` and `sun397` read the real on-disk formats of PASCAL VOC 2007/2012 and SUN397; the synthetic
world (`imagenet_transfer.synthetic`) writes the same formats, so one reader serves both.
"""
