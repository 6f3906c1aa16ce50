"""Hold photos out of a VOC dataset so a model can be tried on photos it never saw.

The learning loop needs photos that are not in the dataset a champion trained on: some for users
to correct (the pool) and some that nobody corrects, to measure what the corrections changed
(unseen). VOC photos from elsewhere cannot be downloaded here, so this draws both from a VOC
folder: it writes a VOC-layout copy without them (links, not copies) and lists the held-out ids.

    .venv/bin/python scripts/voc_pool.py ../shared/datasets/voc-real data/raw/voc-real-part --pool 300 --unseen 200

Writes OUT/{Annotations,JPEGImages,ImageSets/Main} for the kept photos, and OUT.pool.txt and
OUT.unseen.txt (one image id a line; the photos and annotations stay in the source folder).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def held_out(ids: list[str], pool: int, unseen: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded draw of `pool` and then `unseen` ids, disjoint."""
    drawn = random.Random(seed).sample(sorted(ids), pool + unseen)
    return sorted(drawn[:pool]), sorted(drawn[pool:])


def write_subset(source: Path, out: Path, dropped: set[str]) -> int:
    """A VOC folder of `source` without the `dropped` ids: linked photos and annotations, and every
    ImageSets/Main list filtered. Returns the number of photos kept."""
    main = source / "ImageSets" / "Main"
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    kept = [line.strip() for line in (main / "trainval.txt").read_text().splitlines() if line.strip() and line.strip() not in dropped]
    for image_id in kept:
        for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
            link = out / folder / f"{image_id}{suffix}"
            if not link.exists():
                link.symlink_to((source / folder / f"{image_id}{suffix}").resolve())
    for listing in main.glob("*.txt"):
        lines = [line for line in listing.read_text().splitlines() if line.strip() and line.split()[0] not in dropped]
        (out / "ImageSets" / "Main" / listing.name).write_text("\n".join(lines) + "\n")
    return len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pool", type=int, default=300, help="photos users correct")
    parser.add_argument("--unseen", type=int, default=200, help="photos nobody corrects: where the change is measured")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ids = [line.strip() for line in (args.source / "ImageSets" / "Main" / "trainval.txt").read_text().splitlines() if line.strip()]
    pool, unseen = held_out(ids, args.pool, args.unseen, args.seed)
    kept = write_subset(args.source, args.out, set(pool) | set(unseen))
    for name, listed in (("pool", pool), ("unseen", unseen)):
        args.out.with_name(f"{args.out.name}.{name}.txt").write_text("\n".join(listed) + "\n")
    print(f"{args.out}: {kept} photos kept; {len(pool)} in the pool, {len(unseen)} unseen ({args.out.name}.pool.txt, .unseen.txt)")


if __name__ == "__main__":
    main()
