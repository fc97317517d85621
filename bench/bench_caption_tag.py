"""Images per second of BLIP captioning and WD14 tagging (tiny models built here; no weights can be downloaded).

    .venv/bin/python bench/bench_caption_tag.py [--images 32] [--batch 8]

Each is compared, in the same run, with the simplest loop over the same model (one image at a time).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (512, 384), ((i * 37) % 255, (i * 91) % 255, 128)).save(folder / f"{i:03d}.png")
    return folder


def rate(fn, images: int) -> float:
    started = time.perf_counter()
    fn()
    return images / (time.perf_counter() - started)


def main() -> None:
    import numpy as np

    from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
    from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, tag_images
    from lib_sdtrain.demo.onnx_writer import write_tagger_onnx

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdtrain-bench-tag-"))
    folder = make_images(work / "images", args.images)

    tagger_dir = work / "tagger"
    tagger_dir.mkdir()
    tags = 6000  # WD14 v2 has about 9000 tags; the tiny network's cost is dominated by pre-processing anyway
    rng = np.random.default_rng(0)
    write_tagger_onnx(tagger_dir / "model.onnx", 448, rng.normal(size=(3, tags)).astype("f4"), np.zeros(tags, "f4"))
    (tagger_dir / "selected_tags.csv").write_text(
        "tag_id,name,category,count\n" + "".join(f"{i},tag_{i},0,1\n" for i in range(tags))
    )
    tagger = find_tagger(str(tagger_dir))
    batched = rate(lambda: tag_images(folder, tagger, TagOptions(batch_size=args.batch, overwrite=True)), args.images)
    single = rate(lambda: tag_images(folder, tagger, TagOptions(batch_size=1, overwrite=True)), args.images)
    print(f"WD14 tagging (448 px input): batch {args.batch}: {batched:.1f} images/s, batch 1: {single:.1f} images/s")

    from lib_sdtrain.demo.tiny_blip import write_tiny_blip

    blip = load_blip(str(write_tiny_blip(work / "blip")), device="cpu")
    options = CaptionOptions(beam_search=True, num_beams=3, max_length=20, overwrite=True)
    batch_options = CaptionOptions(**{**options.__dict__, "batch_size": args.batch})
    batched = rate(lambda: caption_images(folder, blip, batch_options), args.images)
    single = rate(lambda: caption_images(folder, blip, options), args.images)
    print(f"BLIP captioning (tiny, beam 3): batch {args.batch}: {batched:.1f} images/s, batch 1: {single:.1f} images/s")


if __name__ == "__main__":
    main()
