"""Captions and tags merged into kohya's metadata JSON (`meta_clean.json`), with kohya's cleaning rules.

Schema (as kohya's merge_captions_to_metadata.py / merge_dd_tags_to_metadata.py write it):
`{image_key: {"caption": "...", "tags": "t1, t2"}}`, where image_key is the file stem, or with `full_path` the
image path as found under the folder given (`str(folder / name)`, exactly how kohya builds it, so keys written by
kohya and by us match when the same folder argument is used). An existing file is merged into, not replaced.

The cleaning rules re-implement kohya's clean_captions_and_tags.py (also inlined in the kohya-trainer fork's
merge_all_to_metadata.py that the tutorial runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_sdtrain.dataset.images import dataset_images
from lib_sdtrain.errors import ConfigError, DatasetError, shorten
from lib_sdtrain.utils.files import atomic_write_json, check_writable
from lib_sdtrain.utils.progress import Progress

Metadata = dict[str, dict[str, Any]]

# --- reading caption files -----------------------------------------------------------------------------------------

# utf-8-sig first: it reads plain UTF-8 too and drops the BOM Windows editors add. cp1252 before latin-1 because
# Windows tools write it; latin-1 maps every byte, so reading never fails.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


def read_caption_file(path: Path) -> tuple[str, str | None]:
    """The stripped text of a caption/tag file and, when it was not UTF-8, a warning naming the encoding used."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
            return text.strip(), f"{path}: read as UTF-16 (it has a byte-order mark); save it as UTF-8"
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError:
        pass
    for encoding in _FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        return text.strip(), f"{path}: not UTF-8, read as {encoding}; check the text and save it as UTF-8"
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def read_kohya_text(path: Path) -> tuple[str, str | None]:
    """What kohya trains on from a caption or tag file: its first line, stripped (CRLF and a BOM handled); the
    warning also says when further lines are left out."""
    text, warning = read_caption_file(path)
    lines = text.splitlines()
    dropped = sum(1 for line in lines[1:] if line.strip())
    if dropped:
        note = f"{path}: only the first line is used, as kohya uses it ({dropped} more line(s) left out)"
        warning = f"{warning}; {note}" if warning else note
    return (lines[0].strip() if lines else ""), warning


def is_blank_text(text: str) -> bool:
    """Nothing but whitespace and separators (", , ,"): trains on nothing, so it counts as no caption."""
    return not text.replace(",", " ").strip()


# --- keys and files --------------------------------------------------------------------------------------------------


def image_key(image_path: Path, full_path: bool) -> str:
    return str(image_path) if full_path else image_path.stem


def is_path_key(key: str) -> bool:
    """A key written with --full_path (the image's path, folder and extension included) rather than a file stem.
    kohya's full-path keys always hold the folder; a stem may end like an extension (cat.jpg.png -> "cat.jpg")."""
    return "/" in key or "\\" in key


def check_key_style(metadata: Metadata, source: str | Path, full_path: bool) -> None:
    """A DatasetError unless every key of `metadata` is in the style `full_path` asks for. Keys by path and by
    file name for the same image would be two entries: one image trained twice, once without its caption."""
    paths = [key for key in metadata if is_path_key(key)]
    names = [key for key in metadata if not is_path_key(key)]
    again = "Run merge again into a new file, with --full_path or without it throughout"
    if paths and names:
        raise DatasetError(
            f"{source} mixes image keys by path ({len(paths)}, e.g. {paths[0]!r}: written with --full_path) and by "
            f"file name ({len(names)}, e.g. {names[0]!r}: written without it). {again}."
        )
    if paths and not full_path:
        raise DatasetError(
            f"{source} keys images by path (e.g. {paths[0]!r}): it was written with --full_path. "
            f"Use --full_path here too, or: {again}."
        )
    if names and full_path:
        raise DatasetError(
            f"{source} keys images by file name (e.g. {names[0]!r}): it was written without --full_path. "
            f"Leave out --full_path here, or: {again}."
        )


def load_metadata(path: str | Path) -> Metadata:
    """Read a metadata JSON; a clear DatasetError when it is not kohya's `{key: {...}}` object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as e:
        raise DatasetError(f"Metadata file not found: {path}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"Metadata file {path} is not valid JSON ({e}); fix or delete it.") from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"Metadata file {path} is not a kohya metadata file: its top level is a {type(data).__name__}, not an "
            "object of {image_key: {caption, tags, train_resolution}}."
        )
    for key, entry in data.items():
        problem = entry_problem(entry)
        if problem:
            raise DatasetError(f"Metadata file {path}, entry {shorten(key)}: {problem}. Fix it, or run merge again.")
    return data


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one metadata entry's shape (kohya reads caption and tags as text, train_resolution as
    [width, height]), or None."""
    if not isinstance(entry, dict):
        return f"a {type(entry).__name__}, not an object"
    for name in ("caption", "tags"):
        if name in entry and not isinstance(entry[name], str):
            return f'"{name}" is a {type(entry[name]).__name__}, not text'
    size = entry.get("train_resolution")
    if "train_resolution" in entry and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        return f'"train_resolution" is {shorten(size, 40)}, not [width, height] in pixels'
    return None


def check_recursive_keys(recursive: bool, full_path: bool) -> None:
    # Stems from sub-folders collide; kohya refuses the combination too.
    if recursive and not full_path:
        raise ConfigError("--recursive needs --full_path (image names in sub-folders can repeat).")


# --- kohya's cleaning rules ------------------------------------------------------------------------------------------
# Tags are handled as ", t1, , t2, " (every tag framed by ", " on both sides, separators doubled) so that each
# pattern below matches one whole tag and neighbouring matches never share a separator.

_HAIR_LENGTH = re.compile(r", (long|short|medium) hair, ")
_HAIR_CUT = re.compile(r", (bob|hime) cut, ")
_HAIR_ANY = re.compile(r", ([\w\-]+) hair, ")
_SINGLE_WORD_TAG = re.compile(r", ([\w\-]+|hair ornament), ")
# With several people, a second hair/eye/sleeve/hairstyle tag means the tags describe different people: drop them all.
_CONFLICTING_WHEN_MANY = (
    _HAIR_LENGTH,
    _HAIR_CUT,
    re.compile(r", [\w\-]+ eyes, "),
    re.compile(r", ([\w\-]+ sleeves|sleeveless), "),
    re.compile(
        r", (ponytail|braid|ahoge|twintails|[\w\-]+ bun|single hair bun|single side bun|two side up|two tails"
        r"|[\w\-]+ braid|sidelocks), "
    ),
)
_HAIR_LENGTH_PLACEHOLDER = ", @@@, "

# Applied in this order, each until nothing changes (BLIP's anime vocabulary -> "girl").
CAPTION_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("anime anime", "anime"),
    ("young ", ""),
    ("anime girl", "girl"),
    ("cartoon female", "girl"),
    ("cartoon lady", "girl"),
    ("cartoon character", "girl"),
    ("cartoon woman", "girl"),
    ("cartoon women", "girls"),
    ("cartoon girl", "girl"),
    ("anime female", "girl"),
    ("anime lady", "girl"),
    ("anime character", "girl"),
    ("anime woman", "girl"),
    ("anime women", "girls"),
    ("lady", "girl"),
    ("female", "girl"),
    ("woman", "girl"),
    ("women", "girls"),
    ("people", "girls"),
    ("person", "girl"),
    ("a cartoon figure", "a figure"),
    ("a cartoon image", "an image"),
    ("a cartoon picture", "a picture"),
    ("an anime cartoon image", "an image"),
    ("a cartoon anime drawing", "a drawing"),
    ("a cartoon drawing", "a drawing"),
    ("girl girl", "girl"),
)


def clean_tags(tags: str) -> str:
    """kohya's tag cleaning: underscores to spaces (but `^_^`), nothing after a DeepDanbooru `, rating...` tag,
    conflicting hair/eye/... tags dropped when there are several girls/boys, and a one-word tag dropped when a
    longer tag ends with it ("shirt" beside "white shirt")."""
    tags = tags.replace("^_^", "\0").replace("_", " ").replace("\0", "^_^")
    tags = tags.split(", rating")[0]
    framed = ", " + tags.replace(", ", ", , ") + ", "

    if "girls" in framed or "boys" in framed:
        for pattern in _CONFLICTING_WHEN_MANY:
            if len(pattern.findall(framed)) > 1:
                framed = pattern.sub("", framed)
        # "<colour> hair" tags conflict too, but the (single, by now) hair-length tag also ends in " hair": park it.
        length_tag = _HAIR_LENGTH.search(framed)
        if length_tag:
            framed = _HAIR_LENGTH.sub(_HAIR_LENGTH_PLACEHOLDER, framed)
        if len(_HAIR_ANY.findall(framed)) > 1:
            framed = _HAIR_ANY.sub("", framed)
        if length_tag:
            framed = framed.replace(_HAIR_LENGTH_PLACEHOLDER, length_tag.group())

    for word in _SINGLE_WORD_TAG.findall(framed):
        if re.search(rf", ((\w+) )+{re.escape(word)}, ", framed):
            framed = framed.replace(f", {word}, ", "")

    framed = framed.replace(", , ", ", ")
    return framed[2:-2] if framed.startswith(", ") and framed.endswith(", ") else framed.strip(", ")


def clean_caption(caption: str) -> str:
    for old, new in CAPTION_REPLACEMENTS:
        while old in caption:
            caption = caption.replace(old, new)
    return caption


def clean_metadata(metadata: Metadata) -> None:
    """Clean every entry in place (entries from an earlier merge too, as kohya's cleaner does)."""
    for entry in metadata.values():
        if isinstance(entry.get("tags"), str):
            entry["tags"] = clean_tags(entry["tags"])
        if isinstance(entry.get("caption"), str):
            entry["caption"] = clean_caption(entry["caption"])


# --- merging ---------------------------------------------------------------------------------------------------------


@dataclass
class MergeOptions:
    full_path: bool = False
    recursive: bool = False
    caption_extension: str = ".caption"
    tag_extension: str = ".txt"
    clean: bool = False


@dataclass
class MergeResult:
    metadata: Metadata
    images: int = 0
    captions: int = 0
    tags: int = 0
    missing_captions: list[Path] = field(default_factory=list)
    missing_tags: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)  # left out before reading, and why

    def summary(self) -> str:
        lines = [
            f"images: {self.images}, captions merged: {self.captions}, tags merged: {self.tags}, "
            f"skipped: {len(self.skipped)}",
        ]
        lines.extend(f"skipped {path.name}: {reason}" for path, reason in self.skipped.items())
        for label, paths in (
            ("without a caption file", self.missing_captions),
            ("without a tag file", self.missing_tags),
        ):
            if paths:
                shown = ", ".join(p.name for p in paths[:10]) + (" ..." if len(paths) > 10 else "")
                lines.append(f"{len(paths)} image(s) {label}: {shown}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _normalise_extension(extension: str) -> str:
    return extension if extension.startswith(".") else "." + extension


def merge_captions_and_tags(
    train_dir: str | Path,
    metadata: Metadata,
    options: MergeOptions,
    progress: Progress | None = None,
) -> MergeResult:
    """Add `<stem><caption_extension>` as "caption" and `<stem><tag_extension>` as "tags" for every image.

    A missing or blank caption or tag file leaves that field of the entry as it was and is counted, never fatal.
    Images sharing a name (dup.png, dup.jpg) share their text files: all but the first are skipped, and named.
    """
    check_recursive_keys(options.recursive, options.full_path)
    progress = progress or Progress()
    listing = dataset_images(train_dir, options.recursive, progress)
    clashes = listing.name_clashes()
    images = [path for path in listing.images if path not in clashes]
    caption_ext = _normalise_extension(options.caption_extension)
    tag_ext = _normalise_extension(options.tag_extension)
    result = MergeResult(metadata=metadata, images=len(images), skipped={**listing.skipped, **clashes})

    progress.start(len(images), "merging captions and tags")
    for path in images:
        progress.check_cancelled()
        entry = metadata.setdefault(image_key(path, options.full_path), {})
        for field_name, extension, missing in (
            ("caption", caption_ext, result.missing_captions),
            ("tags", tag_ext, result.missing_tags),
        ):
            text_path = path.with_suffix(extension)
            if not text_path.is_file():
                missing.append(path)
                continue
            text, warning = read_kohya_text(text_path)
            if is_blank_text(text):  # a blank file is no caption: merged as "" it would train on nothing, silently
                missing.append(path)
                warning = f"{text_path} is empty (or only whitespace and commas): counted as no {field_name}"
                text = ""
            if warning:
                result.warnings.append(warning)
                progress.message(f"warning: {warning}")
            if not text:
                continue
            entry[field_name] = text
            if field_name == "caption":
                result.captions += 1
            else:
                result.tags += 1
        progress.advance(1)
    progress.finish()

    if options.clean:
        clean_metadata(metadata)
    return result


def merge_to_file(
    train_dir: str | Path,
    out_json: str | Path,
    options: MergeOptions,
    in_json: str | Path | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge into `in_json` (else into `out_json` itself when it exists, as kohya does); write `out_json` atomically."""
    out_json = Path(out_json)
    check_writable(out_json.parent, f"{out_json.name} is written there")
    source = Path(in_json) if in_json else (out_json if out_json.is_file() else None)
    metadata = load_metadata(source) if source else {}
    if source:
        check_key_style(metadata, source, options.full_path)
    result = merge_captions_and_tags(train_dir, metadata, options, progress)
    atomic_write_json(out_json, result.metadata, indent=2)
    return result
