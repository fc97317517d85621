"""The dataset health report: what will train, what will not, and what might train badly.

Counts, unreadable files with reasons, upscaled images (smaller than their bucket), byte-identical duplicates,
training texts longer than CLIP's 75 tokens, and the bucket histogram as a PNG. Written next to the metadata as
`<name>.report.txt` and `.sdtrain/<name>.buckets.png` (out of other tools' image listings); the CLI prints the
summary.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lib_sdtrain.dataset.images import MAX_IMAGE_PIXELS, dataset_images, report_chart_path, scan_images
from lib_sdtrain.dataset.metadata import Metadata, check_recursive_keys, image_key, is_blank_text, read_kohya_text
from lib_sdtrain.prepare.buckets import BucketAssigner, BucketSettings, Size
from lib_sdtrain.prepare.scan import ImageRecord, inspect_image, prefetch
from lib_sdtrain.utils.files import atomic_path, atomic_write_text
from lib_sdtrain.utils.progress import Progress

MAX_TOKENS = 75  # CLIP's 77 positions minus the begin/end tokens
EXTREME_CROP = 0.25  # more of the picture than this cut off to fit a bucket: the subject may be gone


class TokenCounter:
    """Tokens of a training text: exact with a CLIP tokenizer, otherwise an estimate that says so."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.label = (
            "CLIP tokens"
            if tokenizer is not None
            else "estimated tokens (no tokenizer given: words + punctuation marks; CLIP can need more)"
        )

    def count(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)
        return len(re.findall(r"\w+|[^\w\s]", text))


def training_text(entry: dict[str, Any]) -> str:
    """What kohya's fine-tuning trains on: caption, then ", " and the tags when there are tags."""
    caption, tags = entry.get("caption"), entry.get("tags")
    if caption is None:
        return tags or ""
    return f"{caption}, {tags}" if tags else caption


@dataclass
class DatasetReport:
    train_dir: Path
    records: list[ImageRecord]
    settings: BucketSettings
    token_label: str = ""
    without_caption: list[str] = field(default_factory=list)
    without_tags: list[str] = field(default_factory=list)
    long_texts: list[tuple[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)  # image-like files left out before opening them

    @property
    def readable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.error is None]

    @property
    def unreadable(self) -> list[ImageRecord]:
        return [r for r in self.records if r.error is not None]

    @property
    def upscaled(self) -> list[ImageRecord]:
        return [r for r in self.readable if r.upscaled]

    @property
    def extreme_crops(self) -> list[ImageRecord]:
        return [r for r in self.readable if r.cropped > EXTREME_CROP]

    def warning_count(self) -> int:
        """Everything that trains, but maybe badly: texts cut off, images without a caption, extreme crops, notes."""
        return len(self.long_texts) + len(self.without_caption) + len(self.extreme_crops) + len(self.warnings)

    def _paths_by_key(self) -> dict[str, Path]:
        # The usable image wins a key that a left-out one (dup.png beside dup.jpg) shares.
        return {r.key: r.path for r in [*self.unreadable, *self.readable]}

    @property
    def duplicates(self) -> list[list[ImageRecord]]:
        groups: defaultdict[str, list[ImageRecord]] = defaultdict(list)
        for record in self.records:
            if record.sha256:
                groups[record.sha256].append(record)
        return [group for group in groups.values() if len(group) > 1]

    @property
    def bucket_counts(self) -> Counter[Size]:
        return Counter(r.choice.bucket for r in self.readable if r.choice is not None)

    def problem_images(self) -> dict[str, str]:
        """{image path: what is wrong with it}, for the UI's list of images that need a look."""
        problems = {str(r.path): f"left out: {r.error}" for r in self.unreadable}
        problems.update({str(path): f"skipped: {reason}" for path, reason in self.skipped.items()})
        for r in self.upscaled:
            if r.size and r.choice:
                problems[str(r.path)] = (
                    f"upscaled: {r.size[0]}x{r.size[1]} -> bucket {r.choice.bucket[0]}x{r.choice.bucket[1]}"
                )
        for group in self.duplicates:
            for r in group[1:]:
                problems[str(r.path)] = f"duplicate of {group[0].path.name}"
        by_key = {key: str(path) for key, path in self._paths_by_key().items()}
        for key, count in self.long_texts:
            problems.setdefault(by_key.get(key, key), f"text of {count} tokens (over {MAX_TOKENS}, cut off)")
        for key in set(self.without_caption) & set(self.without_tags):
            problems.setdefault(by_key.get(key, key), "no caption and no tags: trains on an empty text")
        for key in self.without_caption:
            problems.setdefault(by_key.get(key, key), "no caption, or an empty one")
        for r in self.extreme_crops:
            problems.setdefault(str(r.path), _crop_line(r))
        return problems

    def summary(self) -> str:
        s = self.settings
        mode = "no upscale" if s.no_upscale else f"{s.min_bucket_reso}-{s.max_bucket_reso}"
        lines = [
            f"Dataset report for {self.train_dir}",
            f"images: {len(self.records)} found, {len(self.readable)} usable, {len(self.unreadable)} unreadable, "
            f"{len(self.skipped)} other file(s) skipped",
            f"buckets: {len(self.bucket_counts)} used (max resolution {s.max_resolution[0]}x{s.max_resolution[1]}, "
            f"{mode}, step {s.bucket_reso_steps})",
        ]
        for bucket, count in sorted(self.bucket_counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0])):
            lines.append(f"  {bucket[0]:>5}x{bucket[1]:<5} {count}")
        if self.readable:
            mean_error = sum(abs(r.choice.ar_error) for r in self.readable if r.choice) / len(self.readable)
            lines.append(f"mean aspect-ratio error: {mean_error:.4f}")
        lines.append(f"without a caption: {len(self.without_caption)}, without tags: {len(self.without_tags)}")
        _list(lines, "unreadable (left out)", [f"{r.path.name}: {r.error}" for r in self.unreadable])
        _list(lines, "skipped (not used as images)", [f"{p.name}: {why}" for p, why in self.skipped.items()])
        _list(
            lines,
            "smaller than their bucket (upscaled)",
            [
                f"{r.path.name}: {r.size[0]}x{r.size[1]} -> bucket {r.choice.bucket[0]}x{r.choice.bucket[1]}"
                for r in self.upscaled
                if r.size and r.choice
            ],
        )
        _list(
            lines,
            "exact duplicates (identical file bytes)",
            [", ".join(r.path.name for r in group) for group in self.duplicates],
        )
        _list(
            lines,
            f"training texts over {MAX_TOKENS} tokens (the rest is cut off; counted in {self.token_label})",
            [f"{key}: {count}" for key, count in self.long_texts],
        )
        by_key = self._paths_by_key()
        _list(
            lines, "no caption, or an empty one", [by_key[k].name if k in by_key else k for k in self.without_caption]
        )
        _list(
            lines,
            f"extreme crops (over {EXTREME_CROP:.0%} of the picture cut off to fit a bucket)",
            [_crop_line(r) for r in self.extreme_crops],
        )
        lines.append(
            f"warnings: {self.warning_count()} ({len(self.without_caption)} without a caption, "
            f"{len(self.long_texts)} texts over {MAX_TOKENS} tokens, {len(self.extreme_crops)} extreme crops, "
            f"{len(self.warnings)} notes)"
        )
        lines.extend(f"  {note}" for note in self.warnings)
        return "\n".join(lines)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.report.txt` and the chart `.sdtrain/<name>.buckets.png` into `folder` (atomically)."""
        text_path = folder / f"{name}.report.txt"
        png_path = report_chart_path(folder, name)
        atomic_write_text(text_path, self.summary() + "\n")
        chart = draw_bucket_histogram(self.bucket_counts, f"{len(self.readable)} images in {self.train_dir.name}")
        with atomic_path(png_path) as tmp:
            chart.save(tmp, format="PNG")
        return text_path, png_path


def _crop_line(record: ImageRecord) -> str:
    assert record.size is not None and record.choice is not None
    (w, h), (bw, bh) = record.size, record.choice.bucket
    return f"{record.path.name}: {w}x{h} -> bucket {bw}x{bh}, {record.cropped:.0%} cut off"


def _list(lines: list[str], title: str, items: list[str], limit: int = 50) -> None:
    lines.append(f"{title}: {len(items)}")
    lines.extend(f"  {item}" for item in items[:limit])
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")


# --- building a report -----------------------------------------------------------------------------------------------


def build_report(
    train_dir: Path,
    records: list[ImageRecord],
    settings: BucketSettings,
    *,
    metadata: Metadata | None = None,
    caption_extension: str = ".caption",
    tag_extension: str = ".txt",
    tokenizer: Any = None,
    warnings: list[str] | None = None,
    recursive: bool = False,
) -> DatasetReport:
    """Texts come from `metadata` when given, else from the caption/tag files beside the images. The files that
    were skipped before opening (unsupported formats, broken links) are listed again from the folder."""
    counter = TokenCounter(tokenizer)
    report = DatasetReport(Path(train_dir), records, settings, token_label=counter.label, warnings=list(warnings or []))
    report.skipped = scan_images(train_dir, recursive).skipped
    for record in report.readable:
        entry = (
            metadata.get(record.key, {})
            if metadata is not None
            else _sidecar_entry(record.path, caption_extension, tag_extension, report.warnings)
        )
        if is_blank_text(str(entry.get("caption") or "")):
            report.without_caption.append(record.key)
        if is_blank_text(str(entry.get("tags") or "")):
            report.without_tags.append(record.key)
        tokens = counter.count(training_text(entry))
        if tokens > MAX_TOKENS:
            report.long_texts.append((record.key, tokens))
    return report


def _sidecar_entry(image: Path, caption_extension: str, tag_extension: str, warnings: list[str]) -> dict[str, str]:
    entry = {}
    for name, extension in (("caption", caption_extension), ("tags", tag_extension)):
        path = image.with_suffix(extension)
        if path.is_file():
            entry[name], warning = read_kohya_text(path)
            if warning:
                warnings.append(warning)
    return entry


def scan_dataset(
    train_dir: str | Path,
    settings: BucketSettings,
    *,
    full_path: bool = False,
    recursive: bool = False,
    workers: int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
    progress: Progress | None = None,
) -> list[ImageRecord]:
    """Open every image and assign its bucket, without encoding anything."""
    check_recursive_keys(recursive, full_path)
    progress = progress or Progress()
    assigner = BucketAssigner(settings)
    listing = dataset_images(train_dir, recursive, progress, require_images=False)
    images, clashes = listing.images, listing.name_clashes()

    def inspect(path: Path) -> ImageRecord:
        if path in clashes:
            return ImageRecord(path, image_key(path, full_path), error=clashes[path])
        return inspect_image(path, image_key(path, full_path), assigner, max_pixels=max_pixels)[0]

    records = []
    progress.start(len(images), "checking images")
    try:
        for record in prefetch(images, inspect, workers):
            progress.check_cancelled()
            records.append(record)
            if record.error and record.path not in clashes:  # clashes were told with the listing
                progress.message(f"unreadable: {record.path}: {record.error}")
            progress.advance(1)
    finally:
        progress.finish()
    return records


# --- the histogram ---------------------------------------------------------------------------------------------------

_BACKGROUND, _INK, _MUTED, _BAR = (255, 255, 255), (30, 30, 30), (110, 110, 110), (66, 133, 244)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in ("DejaVuSans.ttf", "Arial.ttf", "arial.ttf", "Helvetica.ttc"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def draw_bucket_histogram(counts: Counter[Size] | dict[Size, int], title: str) -> Image.Image:
    """One row per used bucket, portrait to landscape: the bucket's shape, its size, a bar and the count."""
    rows = sorted(counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0]))
    font, small = _font(16), _font(13)
    row_h, icon_box, label_w, bar_w, margin, top = 30, 24, 110, 420, 16, 56
    width = margin * 2 + icon_box + 10 + label_w + bar_w + 60
    height = top + max(len(rows), 1) * row_h + margin + 20
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((margin, 12), f"Aspect-ratio buckets: {title}", fill=_INK, font=font)
    draw.text((margin + icon_box + 10, 34), "bucket (W x H)", fill=_MUTED, font=small)
    draw.text((margin + icon_box + 10 + label_w, 34), "images", fill=_MUTED, font=small)
    if not rows:
        draw.text((margin, top + 6), "no usable images", fill=_MUTED, font=font)
        return image
    peak = max(count for _, count in rows)
    for i, ((w, h), count) in enumerate(rows):
        y = top + i * row_h
        scale = icon_box / max(w, h)
        iw, ih = max(2, round(w * scale)), max(2, round(h * scale))
        ix, iy = margin + (icon_box - iw) // 2, y + (row_h - ih) // 2
        draw.rectangle((ix, iy, ix + iw, iy + ih), outline=_MUTED, width=1)
        x = margin + icon_box + 10
        draw.text((x, y + 6), f"{w} x {h}", fill=_INK, font=font)
        x += label_w
        length = max(2, round(bar_w * count / peak))
        draw.rectangle((x, y + 6, x + length, y + row_h - 6), fill=_BAR)
        draw.text((x + length + 6, y + 6), str(count), fill=_INK, font=font)
    total = sum(count for _, count in rows)
    draw.text((margin, height - margin - 14), f"{total} images in {len(rows)} buckets", fill=_MUTED, font=small)
    return image
