#!/usr/bin/env python
"""Put trained checkpoints side by side in one model (``h_model.ensemble``).

    python training/ensemble_models.py RUN_A RUN_B [...] --out DIR [--mode concat|mean] [--weights 0.6 0.4] [--half]

The members must share the variant, head settings and preprocessing. The result is an ordinary
checkpoint (``h_model.load(DIR)``, ``FaceVerifier.load(DIR)``); a face ensemble gets its
verification threshold from ``python training/bundle_face_model.py DIR --out ...``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.ensemble import ensemble_checkpoints  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="checkpoints (run directories or model.safetensors), two or more")
    ap.add_argument("--out", required=True, help="run directory to write")
    ap.add_argument("--mode", choices=("concat", "mean"), default="concat",
                    help="concat: members' normalised embeddings side by side (cosine = mean of the members' "
                         "cosines); mean: their average, for members that embed into one space (default concat)")
    ap.add_argument("--weights", type=float, nargs="+", default=None,
                    help="each member's share of the ensemble's cosine, one per run (default equal)")
    ap.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    a = ap.parse_args(argv)
    try:
        weights = ensemble_checkpoints(a.runs, a.out, a.half, a.mode, a.weights)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MB), an ensemble ({a.mode}) of {len(a.runs)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
