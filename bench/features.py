"""Feature extraction for the linear protocols vs the backbone's pure inference speed (target: >= 80 %).

    python bench/features.py [--backbone random:small] [--layer fc7] [--images 2000] [--device cpu]

Extracts `--layer` features of the default embedded world's SUN397 and ImageNet-style images (read, decode,
resize, normalise, forward; no cache) and times the backbone alone on random tensors of the same size, in the
same run; prints both in images/s and their ratio. About 30 s on 2 CPU cores.
"""

import argparse

import torch

from imagenet_transfer.transfer.common import resolve_backbone, world_part
from imagenet_transfer.transfer.features import extract_features, inference_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="random:small")
    parser.add_argument("--layer", default="fc7")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes beside the forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    net, _ = resolve_backbone(args.backbone)
    paths = sorted(str(p) for p in world_part("imagenet/train").rglob("*.JPEG"))[: args.images]
    ceiling = inference_speed(
        net,
        batch_size=args.batch_size,
        batches=max(2, args.images // args.batch_size // 4),
        layer=args.layer,
        device=args.device,
    )
    extracted = extract_features(
        net, paths, (args.layer,), batch_size=args.batch_size, workers=args.workers, device=args.device, cache=False
    )
    print(
        f"backbone {args.backbone} ({net.resolution} px), layer {args.layer}, {len(paths)} images, {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"pure inference (random tensors): {ceiling:8.0f} images/s")
    print(f"feature extraction (JPEG → features): {extracted.images_per_s:8.0f} images/s")
    print(f"ratio {extracted.images_per_s / ceiling:.2f} (target >= 0.80)")


if __name__ == "__main__":
    main()
