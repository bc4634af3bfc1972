#!/usr/bin/env python3
"""Regenerate the small real datasets in data/ from scikit-learn's bundled copies.

Writes breast_cancer and digits as .h5 (h5py), .zarr (zarr-python 3, format 3)
and .parquet (pyarrow), in the layout data/README.md describes. Needs
scikit-learn (the `test` extra); nothing is downloaded: both datasets ship
inside scikit-learn.

    python scripts/make_sample_data.py [--out data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from streamtrain.io.writers import open_writer

# Small files: a few row groups / chunks each, so the chunked code paths run.
CHUNK_ROWS = {"breast_cancer": 128, "digits": 256}


def load(name: str):
    from sklearn import datasets

    bunch = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}[name]()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int32), [str(n) for n in bunch.feature_names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name in CHUNK_ROWS:
        X, y, names = load(name)
        for suffix in (".h5", ".zarr", ".parquet"):
            path = out / f"{name}{suffix}"
            if path.is_dir():
                shutil.rmtree(path)
            # Parquet gets the real column names; the array formats keep them as an attribute of X.
            with open_writer(path, len(X), names, "y" if suffix != ".parquet" else "target", "int32",
                             CHUNK_ROWS[name], overwrite=True) as w:
                w.write(X, y)
            print(f"wrote {path}: {X.shape[0]} rows x {X.shape[1]} features")


if __name__ == "__main__":
    main()
