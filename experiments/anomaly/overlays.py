"""Heatmap overlays of an exported anomaly model on a few held-out images, as the service draws them.

    python experiments/anomaly/overlays.py --model runs/x/model.onnx --out experiments/anomaly/heatmaps IMAGE...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from adapt.contract.modelmeta import read_file as read_metadata
from adapt.core.export import ort_session
from adapt.contract.imageio import read_image, to_model_pixels
from adapt.contract.modelmeta import HEATMAP_NAME, INPUT_NAME, OUTPUT_NAME
from services.heatmap import overlay_png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    meta = read_metadata(args.model)
    session = ort_session(args.model, threads=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for path in map(Path, args.images):
        pixels = to_model_pixels(read_image(path), meta.image_size, meta.resize_mode)
        probs, heat = session.run([OUTPUT_NAME, HEATMAP_NAME], {INPUT_NAME: pixels[None]})
        png = overlay_png(pixels, heat[0], meta.anomaly_threshold)
        target = out / f"{path.parent.name}_{path.stem}.heatmap.png"
        target.write_bytes(png)
        tiles.append(np.concatenate([pixels, np.asarray(Image.open(target).convert("RGB"))], axis=0))
        print(f"{target}: p(defective) = {probs[0, 1]:.3f}, max patch score {heat[0].max():.3f} (threshold {meta.anomaly_threshold:.3f})")
    Image.fromarray(np.concatenate(tiles, axis=1)).save(out / "contact_sheet.png")


if __name__ == "__main__":
    main()
