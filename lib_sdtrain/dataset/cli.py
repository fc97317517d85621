"""`sdtrain caption DIR ...` (BLIP) and `sdtrain tag DIR ...` (WD14), with kohya's option names."""

from __future__ import annotations

import argparse
from typing import Any

from lib_sdtrain.errors import ConfigError
from lib_sdtrain.utils.arguments import float_between, int_at_least
from lib_sdtrain.utils.path_kinds import PathKind, add_argument
from lib_sdtrain.utils.progress import Progress

PROBABILITY = float_between(0.0, 1.0)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    _register_caption(subparsers)
    _register_tag(subparsers)


def _register_tag(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tag",
        help="tag images with a WD14 tagger (ONNX)",
        description="Write <image>.txt with WD14 tags (kohya's tag_images_by_wd14_tagger.py options). "
        "Existing tag files are kept unless --overwrite or --append_tags.",
    )
    add_argument(p, "train_data_dir", kind=PathKind.READ_FOLDER, help="folder of images")
    add_argument(
        p,
        "--model_dir",
        kind=PathKind.WRITE_FOLDER,
        help="folder with model.onnx and selected_tags.csv (or a cache folder for --repo_id)",
    )
    add_argument(
        p,
        "--repo_id",
        kind=PathKind.MODEL,
        default="SmilingWolf/wd-v1-4-convnext-tagger-v2",
        help="hub id of the tagger",
    )
    p.add_argument("--thresh", type=PROBABILITY, default=0.35, help="threshold for tags (0.35)")
    p.add_argument("--general_threshold", type=PROBABILITY, help="threshold for general tags (default: --thresh)")
    p.add_argument("--character_threshold", type=PROBABILITY, help="threshold for character tags (default: --thresh)")
    p.add_argument("--remove_underscore", action="store_true", help="'long_hair' -> 'long hair' (tags over 3 chars)")
    add_argument(p, "--undesired_tags", kind=PathKind.TEXT, default="", help="comma-separated tags never to write")
    add_argument(
        p, "--caption_extension", kind=PathKind.SUFFIX, default=".txt", help="extension of the tag files (.txt)"
    )
    add_argument(p, "--caption_separator", kind=PathKind.TEXT, default=", ", help="separator between tags (', ')")
    p.add_argument("--append_tags", action="store_true", help="add new tags to existing tag files")
    p.add_argument("--overwrite", action="store_true", help="replace existing tag files")
    p.add_argument("--use_rating_tags", action="store_true", help="put the most likely rating tag first")
    p.add_argument("--batch_size", type=int_at_least(1), default=1)
    p.add_argument("--max_data_loader_n_workers", type=int_at_least(0), help="accepted for kohya compatibility")
    p.add_argument("--recursive", action="store_true", help="also tag images in sub-folders")
    p.add_argument("--debug", action="store_true", help="print each image's tags")
    p.set_defaults(handler=run_tag)


def run_tag(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    from lib_sdtrain.dataset.images import dataset_images
    from lib_sdtrain.dataset.tagging import TagOptions, find_tagger, tag_images
    from lib_sdtrain.utils.progress import TqdmProgress

    progress = progress or TqdmProgress()
    dataset_images(args.train_data_dir, args.recursive, writable=True)  # before the tagger: bad folders fail at once
    options = TagOptions(
        thresh=args.thresh,
        general_threshold=args.general_threshold,
        character_threshold=args.character_threshold,
        remove_underscore=args.remove_underscore,
        undesired_tags=args.undesired_tags,
        caption_extension=args.caption_extension,
        caption_separator=args.caption_separator,
        append_tags=args.append_tags,
        overwrite=args.overwrite,
        use_rating_tags=args.use_rating_tags,
        batch_size=args.batch_size,
        recursive=args.recursive,
        debug=args.debug,
    )
    summary = tag_images(args.train_data_dir, find_tagger(args.model_dir, args.repo_id), options, progress)
    return _report_summary("tagged", summary, progress)


def _report_summary(verb: str, summary, progress: Progress) -> dict[str, Any]:
    """Tell the user what a per-image job did; the same numbers are the job's result for the UI and the API."""
    progress.message(
        f"{verb} {summary.written} images; kept {summary.skipped_existing} existing files; "
        f"{len(summary.failed)} unreadable; {len(summary.skipped)} skipped"
    )
    for path, reason in {**summary.failed, **summary.skipped}.items():
        progress.message(f"  {path}: {reason}")
    return {
        "written": summary.written,
        "kept": summary.skipped_existing,
        "failed": dict(summary.failed),
        "skipped": dict(summary.skipped),
    }


def _register_caption(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "caption",
        help="caption images with BLIP",
        description="Write <image>.caption with BLIP (kohya's make_captions.py options). "
        "Existing caption files are kept unless --overwrite.",
    )
    add_argument(p, "train_data_dir", kind=PathKind.READ_FOLDER, help="folder of images")
    add_argument(
        p,
        "--caption_weights",
        kind=PathKind.MODEL,
        default="Salesforce/blip-image-captioning-large",
        help="BLIP model: a transformers folder, a hub id, or Salesforce's original model_large_caption.pth "
        "(default Salesforce/blip-image-captioning-large)",
    )
    add_argument(
        p,
        "--blip_processor",
        kind=PathKind.MODEL,
        default="Salesforce/blip-image-captioning-large",
        help="with a .pth: where the image settings and tokenizer come from (a transformers BLIP folder or hub id)",
    )
    add_argument(
        p,
        "--caption_extension",
        kind=PathKind.SUFFIX,
        default=".caption",
        help="extension of the caption files (.caption)",
    )
    p.add_argument("--batch_size", type=int_at_least(1), default=1)
    p.add_argument("--beam_search", action="store_true", help="beam search (default: nucleus sampling, top_p 0.9)")
    p.add_argument("--num_beams", type=int_at_least(1), default=1)
    p.add_argument("--top_p", type=PROBABILITY, default=0.9)
    p.add_argument("--min_length", type=int_at_least(0), default=5)
    p.add_argument("--max_length", type=int_at_least(1), default=75)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite", action="store_true", help="replace existing caption files")
    p.add_argument("--max_data_loader_n_workers", type=int_at_least(0), help="accepted for kohya compatibility")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--debug", action="store_true", help="print each image's caption")
    p.set_defaults(handler=run_caption)


def run_caption(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    from lib_sdtrain.dataset.captioning import CaptionOptions, caption_images, load_blip
    from lib_sdtrain.dataset.images import dataset_images
    from lib_sdtrain.utils.progress import TqdmProgress

    progress = progress or TqdmProgress()
    if args.min_length > args.max_length:
        raise ConfigError(f"--min_length {args.min_length} is more than --max_length {args.max_length}.")
    dataset_images(args.train_data_dir, args.recursive, writable=True)  # before BLIP: bad folders fail at once
    options = CaptionOptions(
        caption_extension=args.caption_extension,
        batch_size=args.batch_size,
        beam_search=args.beam_search,
        num_beams=args.num_beams,
        top_p=args.top_p,
        min_length=args.min_length,
        max_length=args.max_length,
        seed=args.seed,
        overwrite=args.overwrite,
        recursive=args.recursive,
        debug=args.debug,
    )
    blip = load_blip(args.caption_weights, processor_source=args.blip_processor)
    summary = caption_images(args.train_data_dir, blip, options, progress)
    return _report_summary("captioned", summary, progress)
