"""Transfer benchmarks: how well a pre-trained backbone's features serve other tasks (PAPER.md).

    imagenet-transfer transfer run voc07_det --backbone models:/small-full@current      # one benchmark, one run
    imagenet-transfer transfer all --backbone models:/small-full@current --quick        # every benchmark

The benchmarks (`runner.BENCHMARKS` names them; `runner` opens the MLflow run and logs what they return):
    voc07_det      PASCAL-DET: Faster R-CNN fine-tuned from the backbone, VOC07 11-point mAP on VOC2007 test
    voc12_action   PASCAL-ACT-CLS: person-box action classification by fine-tuning, AP on VOC2012 action val
    sun397         SUN-CLS: scene classification on SUN397's partitions, linear classifier or fine-tuning
    probe          E4 probes: kNN / linear probe on fine classes, and fine predictions mapped to coarse labels

Every benchmark is a package laid out the same way, so one look tells where to change a protocol:
    <benchmark>/__init__.py   the protocol: inputs, outputs, the exact command (docstring); exports Config and run
    <benchmark>/config.py     Config: every knob, checked on creation, with a `quick()` variant for smoke tests
    <benchmark>/data.py       its samples and splits, read from the formats of `imagenet_transfer.datasets`
    <benchmark>/model.py      the network or heads put on the backbone
    <benchmark>/engine.py     train, evaluate and `run(backbone, info, config, *, device, progress) -> Result`
    <benchmark>/figures.py    its figures (matplotlib Figure objects) and result tables
Shared by all of them:
    common.py     Result, resolve_backbone, world_part, validation splits (carve_validation)
    finetune.py   the fine-tuning pieces: SGD with a faster new head, cosine schedule, best epoch on validation
    metrics.py    every evaluator as a pure function or accumulator: VOC07 detection AP, action AP, accuracies
    linear.py     the linear classifier on frozen features and its L2 selection
    features.py   frozen features of a list of images, cached on disk
    figures.py    figure helpers (pyplot-free Figures)
    runner.py     one benchmark (or all) on one backbone as MLflow runs
The dataset readers are `imagenet_transfer.datasets` (no torch training, no MLflow).
"""
