"""`sdtrain merge`, `sdtrain buckets` and `sdtrain report`: the tutorial's merge_all_to_metadata.py and
prepare_buckets_latents.py steps with the same arguments, plus the dataset health report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lib_sdtrain.dataset.images import MAX_IMAGE_PIXELS
from lib_sdtrain.utils.arguments import int_at_least
from lib_sdtrain.utils.path_kinds import PathKind, add_argument
from lib_sdtrain.utils.progress import Progress


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    merge = subparsers.add_parser(
        "merge",
        help="merge caption and tag files into meta_clean.json (kohya's metadata)",
        description="Collect <image>.caption (caption) and <image>.txt (tags) files into kohya's metadata JSON, "
        "merging into an existing file. Like merge_all_to_metadata.py.",
    )
    add_argument(
        merge,
        "train_data_dir",
        kind=PathKind.READ_FOLDER,
        type=Path,
        help="folder with the images and their caption/tag files",
    )
    add_argument(
        merge, "out_json", kind=PathKind.WRITE_FILE, type=Path, help="metadata file to write, e.g. meta_clean.json"
    )
    add_argument(
        merge,
        "--in_json",
        kind=PathKind.READ_FILE,
        type=Path,
        help="metadata to merge into (default: out_json when it exists)",
    )
    merge.add_argument("--full_path", action="store_true", help="key images by path, not by file name")
    merge.add_argument("--recursive", action="store_true", help="also look in sub-folders (needs --full_path)")
    merge.add_argument("--clean_caption", action="store_true", help="apply kohya's caption and tag cleaning rules")
    add_argument(
        merge, "--caption_extension", kind=PathKind.SUFFIX, default=".caption", help="caption file extension (.caption)"
    )
    add_argument(merge, "--tag_extension", kind=PathKind.SUFFIX, default=".txt", help="tag file extension (.txt)")
    merge.add_argument("--caption_extention", dest="caption_extension", help=argparse.SUPPRESS)  # kohya's old spelling
    merge.add_argument("--debug", action="store_true", help="print every entry")
    merge.set_defaults(handler=run_merge)

    buckets = subparsers.add_parser(
        "buckets",
        help="assign aspect-ratio buckets and cache VAE latents (meta_lat.json + .npz)",
        description="Assign each image to an aspect-ratio bucket, encode it with the model's VAE and write "
        "<image>.npz latents and meta_lat.json with train_resolution, as prepare_buckets_latents.py does. "
        "Ends with the dataset report.",
    )
    add_argument(buckets, "train_data_dir", kind=PathKind.READ_FOLDER, type=Path, help="folder with the images")
    add_argument(buckets, "in_json", kind=PathKind.READ_FILE, type=Path, help="metadata to read, e.g. meta_clean.json")
    add_argument(buckets, "out_json", kind=PathKind.WRITE_FILE, type=Path, help="metadata to write, e.g. meta_lat.json")
    add_argument(
        buckets,
        "model",
        kind=PathKind.MODEL,
        help="model with the VAE: .safetensors/.ckpt, diffusers folder, VAE file or hub id",
    )
    _add_bucket_arguments(buckets)
    buckets.add_argument("--batch_size", type=int_at_least(1), default=1, help="images per VAE call (1)")
    buckets.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="VAE precision (no = float32)"
    )
    buckets.add_argument("--flip_aug", action="store_true", help="also cache latents of the mirrored images")
    buckets.add_argument(
        "--skip_existing", action="store_true", help="keep .npz files that already have the right shape"
    )
    buckets.add_argument("--seed", type=int, default=0, help="seed of the latent samples (0)")
    buckets.add_argument(
        "--npz_legacy_arr0",
        action="store_true",
        help="also write the latents as arr_0 (and <stem>_flip.npz with --flip_aug) for kohya v0.6.x; doubles the "
        ".npz size, so off by default",
    )
    buckets.add_argument("--v2", action="store_true", help=argparse.SUPPRESS)  # kohya accepts and ignores it
    buckets.set_defaults(handler=run_buckets)

    report = subparsers.add_parser(
        "report",
        help="check a dataset: unreadable, upscaled and duplicate images, long captions, bucket histogram",
        description="Check every image without encoding anything; write <metadata>.report.txt next to the metadata "
        "and the bucket chart as .sdtrain/<metadata>.buckets.png there (without metadata: dataset.* in the image "
        "folder) and print the summary.",
    )
    add_argument(report, "train_data_dir", kind=PathKind.READ_FOLDER, type=Path, help="folder with the images")
    add_argument(
        report,
        "metadata",
        kind=PathKind.READ_FILE,
        type=Path,
        nargs="?",
        help="metadata JSON to take texts from (default: the caption/tag files)",
    )
    _add_bucket_arguments(report)
    add_argument(
        report,
        "--caption_extension",
        kind=PathKind.SUFFIX,
        default=".caption",
        help="caption file extension (.caption)",
    )
    add_argument(report, "--tag_extension", kind=PathKind.SUFFIX, default=".txt", help="tag file extension (.txt)")
    add_argument(report, "--model", kind=PathKind.MODEL, help="count tokens with this model folder's tokenizer")
    report.set_defaults(handler=run_report)


def _add_bucket_arguments(parser: argparse.ArgumentParser) -> None:
    add_argument(
        parser,
        "--max_resolution",
        kind=PathKind.TEXT,
        default="512,512",
        metavar="W,H",
        help="largest training area (512,512)",
    )
    parser.add_argument("--min_bucket_reso", type=int_at_least(1), default=256, help="smallest bucket side (256)")
    parser.add_argument("--max_bucket_reso", type=int_at_least(1), default=1024, help="largest bucket side (1024)")
    parser.add_argument(
        "--bucket_reso_steps", type=int_at_least(1), default=64, help="bucket sides are multiples of this (64)"
    )
    parser.add_argument(
        "--bucket_no_upscale", action="store_true", help="bucket from each image's own size; never enlarge"
    )
    parser.add_argument("--full_path", action="store_true", help="metadata keys are image paths")
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders (needs --full_path)")
    parser.add_argument(
        "--max_data_loader_n_workers",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="threads that open images ahead (0)",
    )
    add_argument(
        parser, "--tokenizer", kind=PathKind.MODEL, help="CLIP tokenizer folder for exact token counts in the report"
    )
    parser.add_argument(
        "--max_image_pixels",
        type=int_at_least(1),
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse larger images (decompression bombs)",
    )


def _bucket_settings(args: argparse.Namespace):
    from lib_sdtrain.prepare.buckets import BucketSettings, parse_resolution

    return BucketSettings(
        max_resolution=parse_resolution(args.max_resolution),
        min_bucket_reso=args.min_bucket_reso,
        max_bucket_reso=args.max_bucket_reso,
        bucket_reso_steps=args.bucket_reso_steps,
        no_upscale=args.bucket_no_upscale,
    )


def _tokenizer(spec: str | None, model: str | None) -> Any:
    """The tokenizer asked for, else the one inside a diffusers model folder, else None (token counts estimated)."""
    from lib_sdtrain.models.loading import resolve_tokenizer

    if spec:
        return resolve_tokenizer(spec, "sd1")
    if model and (Path(model) / "tokenizer" / "vocab.json").is_file():
        return resolve_tokenizer(None, "sd1", search_dir=Path(model))
    return None


# --- handlers --------------------------------------------------------------------------------------------------------


def run_merge(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    from lib_sdtrain.dataset.metadata import MergeOptions, merge_to_file
    from lib_sdtrain.utils.progress import TqdmProgress

    progress = progress or TqdmProgress()

    options = MergeOptions(
        full_path=args.full_path,
        recursive=args.recursive,
        caption_extension=args.caption_extension,
        tag_extension=args.tag_extension,
        clean=args.clean_caption,
    )
    result = merge_to_file(args.train_data_dir, args.out_json, options, in_json=args.in_json, progress=progress)
    if args.debug:
        for key, entry in result.metadata.items():
            progress.message(f"{key}: caption={entry.get('caption')!r} tags={entry.get('tags')!r}")
    progress.message(result.summary())
    progress.message(f"wrote {args.out_json} ({len(result.metadata)} entries)")
    return {
        "metadata": str(args.out_json),
        "entries": len(result.metadata),
        "captions": result.captions,
        "tags": result.tags,
        "without_caption": [str(p) for p in result.missing_captions],
        "without_tags": [str(p) for p in result.missing_tags],
        "skipped": {str(p): reason for p, reason in result.skipped.items()},
    }


def run_buckets(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    from lib_sdtrain.prepare.job import prepare_buckets_latents
    from lib_sdtrain.prepare.latents import LatentCacheOptions
    from lib_sdtrain.utils.progress import TqdmProgress

    progress = progress or TqdmProgress()

    options = LatentCacheOptions(
        buckets=_bucket_settings(args),
        batch_size=args.batch_size,
        workers=args.max_data_loader_n_workers,
        full_path=args.full_path,
        recursive=args.recursive,
        flip_aug=args.flip_aug,
        skip_existing=args.skip_existing,
        seed=args.seed,
        legacy_arr0=args.npz_legacy_arr0,
        max_pixels=args.max_image_pixels,
    )
    tokenizer = _tokenizer(args.tokenizer, args.model)  # before the long part: a wrong path fails at once
    done = prepare_buckets_latents(
        args.train_data_dir,
        args.in_json,
        args.out_json,
        args.model,
        options,
        mixed_precision=args.mixed_precision,
        tokenizer=tokenizer,
        progress=progress,
    )
    result = done.result
    progress.message(done.report.summary())
    progress.message(
        f"latents: {result.encoded} written, {result.skipped_existing} already cached; "
        f"{len(result.added_keys)} image(s) had no metadata entry (added with train_resolution only)"
    )
    progress.message(f"wrote {args.out_json}, {done.report_path}, {done.histogram_path}")
    return {
        "metadata": str(args.out_json),
        "encoded": result.encoded,
        "already_cached": result.skipped_existing,
        **_report_result(done.report, done.report_path, done.histogram_path),
    }


def _report_result(report, text_path: Path, histogram_path: Path) -> dict[str, Any]:
    """The report as the job's result: its files, the bucket counts, the images that need a look."""
    return {
        "report": str(text_path),
        "histogram": str(histogram_path),
        "summary": report.summary(),
        "buckets": {f"{w}x{h}": n for (w, h), n in sorted(report.bucket_counts.items())},
        "problems": report.problem_images(),
    }


def run_report(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    from lib_sdtrain.dataset.images import report_chart_path
    from lib_sdtrain.dataset.metadata import check_key_style, load_metadata
    from lib_sdtrain.prepare.report import build_report, scan_dataset
    from lib_sdtrain.utils.files import check_writable
    from lib_sdtrain.utils.progress import TqdmProgress

    progress = progress or TqdmProgress()

    settings = _bucket_settings(args)
    folder, name = (args.metadata.parent, args.metadata.stem) if args.metadata else (args.train_data_dir, "dataset")
    if folder.is_dir():  # a missing image folder gets its own message below
        chart = report_chart_path(Path(), name)
        check_writable(folder, f"{name}.report.txt and {chart} are written there")
    metadata = load_metadata(args.metadata) if args.metadata else None
    if metadata is not None:
        check_key_style(metadata, args.metadata, args.full_path)
    records = scan_dataset(
        args.train_data_dir,
        settings,
        full_path=args.full_path,
        recursive=args.recursive,
        workers=args.max_data_loader_n_workers,
        max_pixels=args.max_image_pixels,
        progress=progress,
    )
    report = build_report(
        args.train_data_dir,
        records,
        settings,
        metadata=metadata,
        caption_extension=args.caption_extension,
        tag_extension=args.tag_extension,
        tokenizer=_tokenizer(args.tokenizer, args.model),
        recursive=args.recursive,
    )
    text_path, png_path = report.write(folder, name)
    progress.message(report.summary())
    progress.message(f"wrote {text_path} and {png_path}")
    return _report_result(report, text_path, png_path)
