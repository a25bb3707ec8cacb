"""Build ppdata/data/sample.tar.gz: the first N images per class of each split of the CIFAR-10
JPEG copy, original JPEG bytes, ImageFolder layout ``<split>/<class>/<file>``.

    python scripts/make_sample.py ../shared/data/cifar10-jpeg ppdata/data/sample.tar.gz
"""
import io
import sys
import tarfile
from pathlib import Path

PER_CLASS = {"train": 50, "test": 10}


def main(src: str, dst: str) -> None:
    picked = []
    for split, n in PER_CLASS.items():
        with tarfile.open(Path(src) / f"{split}.tar.gz", "r|gz") as tf:
            counts = {}
            for m in tf:
                if not m.isfile():
                    continue
                cls = m.name.split("/")[1]
                if counts.get(cls, 0) < n:
                    counts[cls] = counts.get(cls, 0) + 1
                    picked.append((m.name, tf.extractfile(m).read()))
    picked.sort()
    with tarfile.open(dst, "w:gz", format=tarfile.USTAR_FORMAT) as out:
        for name, data in picked:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
    print(f"{dst}: {len(picked)} images")


if __name__ == "__main__":
    main(*sys.argv[1:3])
