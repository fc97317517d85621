"""Reviewing and editing a dataset's captions and tags: what the Dataset tab shows and changes, without the UI.

Each image has a caption file (`.caption`, BLIP's) and a tag file (`.txt`, WD14's: tags separated by commas).
Edits are written only when the user saves, atomically; bulk edits say first which files they will change.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lib_sdtrain.dataset.images import IMAGE_EXTENSIONS, list_images
from lib_sdtrain.dataset.metadata import read_caption_file
from lib_sdtrain.errors import DatasetError, OutputError
from lib_sdtrain.utils.files import atomic_path, atomic_write_text, check_safe_name, check_writable

BULK_OPERATIONS = ("add to front", "add to end", "replace", "remove")


@dataclass
class Entry:
    path: Path
    caption: str = ""
    tags: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def _read(path: Path) -> str:
    return read_caption_file(path)[0] if path.is_file() else ""


def load_entries(
    folder: str | Path, caption_extension: str = ".caption", tag_extension: str = ".txt", recursive: bool = False
) -> list[Entry]:
    """Every image of the folder with its caption and tags (empty when it has none)."""
    return load_entries_for(list_images(folder, recursive), caption_extension, tag_extension)


def load_entries_for(
    images: list[Path], caption_extension: str = ".caption", tag_extension: str = ".txt"
) -> list[Entry]:
    return [
        Entry(p, _read(p.with_suffix(caption_extension)), split_tags(_read(p.with_suffix(tag_extension))))
        for p in images
    ]


def filter_entries(entries: list[Entry], query: str = "", untagged_only: bool = False) -> list[Entry]:
    """Images whose tags include every comma-separated term of `query` (or whose caption contains it);
    `untagged_only`: images with no tags and no caption."""
    terms = [t.lower() for t in split_tags(query)]
    chosen = []
    for entry in entries:
        if untagged_only and (entry.tags or entry.caption.strip()):
            continue
        tags = {t.lower() for t in entry.tags}
        caption = entry.caption.lower()
        if all(term in tags or term in caption for term in terms):
            chosen.append(entry)
    return chosen


def save_entry(entry: Entry, caption: str, tags: str, caption_extension: str = ".caption",
               tag_extension: str = ".txt") -> list[Path]:  # fmt: skip
    """Write the caption and tag files of one image if they changed; returns the files written. An empty text
    where there was no file writes nothing."""
    written = []
    new_tags = split_tags(tags)
    check_writable_folder(entry.path.parent)  # both files or neither
    for extension, old, new in (
        (caption_extension, entry.caption, caption.strip()),
        (tag_extension, join_tags(entry.tags), join_tags(new_tags)),
    ):
        path = entry.path.with_suffix(extension)
        if new == old and (path.is_file() or not new):
            continue
        _write_text(path, new + "\n" if new else "")
        written.append(path)
    entry.caption, entry.tags = caption.strip(), new_tags
    return written


@dataclass
class BulkChange:
    entry: Entry
    new_tags: list[str]


def plan_bulk_edit(entries: list[Entry], operation: str, tag: str, replacement: str = "") -> list[BulkChange]:
    """The tag files a bulk edit would change (and how), before anything is written."""
    if operation not in BULK_OPERATIONS:
        raise DatasetError(f"Unknown bulk operation {operation!r}; one of {', '.join(BULK_OPERATIONS)}.")
    tag = tag.strip()
    if not tag:
        raise DatasetError("Type the tag to add, replace or remove.")
    changes = []
    for entry in entries:
        tags = list(entry.tags)
        if operation == "add to front":
            tags = [tag, *[t for t in tags if t != tag]]
        elif operation == "add to end":
            tags = tags if tag in tags else [*tags, tag]
        elif operation == "replace":
            new = replacement.strip()
            tags = list(dict.fromkeys(new if t == tag else t for t in tags if new or t != tag))
        else:
            tags = [t for t in tags if t != tag]
        if tags != entry.tags:
            changes.append(BulkChange(entry, tags))
    return changes


def apply_bulk_edit(changes: list[BulkChange], tag_extension: str = ".txt") -> int:
    for folder in sorted({change.entry.path.parent for change in changes}):  # all or nothing: check them first
        check_writable_folder(folder)
    for change in changes:
        _write_text(change.entry.path.with_suffix(tag_extension), join_tags(change.new_tags) + "\n")
        change.entry.tags = change.new_tags
    return len(changes)


def check_writable_folder(folder: Path) -> None:
    try:
        check_writable(folder, "the caption and tag files are saved beside the images")
    except OutputError as e:
        raise DatasetError(str(e)) from None


def _write_text(path: Path, text: str) -> None:
    """A caption or tag file, atomically (the old one stays whole if this fails); a DatasetError naming the folder."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise DatasetError(
            f"Could not save {path.name} in {path.parent} ({e.strerror or e}). Nothing was changed in that file: "
            "make the folder writable (or free some space) and save again."
        ) from None


@dataclass
class ImportResult:
    folder: Path
    added: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why


TEXT_EXTENSIONS = frozenset({".caption", ".txt"})


def import_files(files: list[str | Path], dataset_root: str | Path, folder_name: str) -> ImportResult:
    """Copy uploaded images (and their caption/tag files), or the images inside uploaded zip files, into
    `dataset_root/folder_name`. Names are reduced to their last part, so nothing can land outside the folder;
    existing files are never overwritten."""
    check_safe_name(folder_name, "folder name")
    target = Path(dataset_root) / folder_name
    target.mkdir(parents=True, exist_ok=True)
    result = ImportResult(target)
    for file in map(Path, files):
        if file.suffix.lower() == ".zip":
            _import_zip(file, target, result)
        else:
            _import_one(file.name, lambda dest, src=file: shutil.copyfile(src, dest), target, result)
    return result


MAX_ENTRY_BYTES = 512 * 2**20
"""The largest file taken out of an uploaded zip (an image at Pillow's pixel limit is smaller)."""
MAX_COMPRESSION_RATIO = 100
"""Images and captions compress little; an entry that expands more than this (over a MiB) is a zip bomb."""
FREE_SPACE_MARGIN = 64 * 2**20


def _import_zip(archive: Path, target: Path, result: ImportResult) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = [info for info in zf.infolist() if _zip_entry_problem(info, result) is None]
            _check_room(archive, entries, target)
            for info in entries:
                name = PurePosixPath(info.filename.replace("\\", "/")).name

                def extract(dest: Path, info: zipfile.ZipInfo = info, zf: zipfile.ZipFile = zf) -> None:
                    _copy_bounded(zf, info, dest)

                try:
                    _import_one(name, extract, target, result)
                except DatasetError as e:  # this entry only; atomic_path removed its partial copy
                    result.skipped[name] = str(e)
    except zipfile.BadZipFile:
        result.skipped[archive.name] = "not a readable zip file (or still uploading: wait until it shows, then retry)"


def _zip_entry_problem(info: zipfile.ZipInfo, result: ImportResult) -> str | None:
    """Why an entry is left out (and recorded as skipped), or None to import it: folders, hidden files, links,
    paths that climb out of the archive, and entries too large or compressed too strongly to be images."""
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if info.is_dir():
        return "a folder"  # not reported: its files are listed one by one
    problem = None
    if path.name.startswith(".") or "__MACOSX" in path.parts:
        problem = "a hidden file"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "a symbolic link (links are never unpacked)"
    elif path.is_absolute() or ".." in path.parts:
        problem = "a path that leaves the archive (.. or /)"
    elif info.file_size > MAX_ENTRY_BYTES:
        problem = f"{info.file_size / 2**20:.0f} MiB unpacked, over the {MAX_ENTRY_BYTES // 2**20} MiB allowed"
    elif info.file_size > 2**20 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        problem = f"unpacks to {info.file_size // max(info.compress_size, 1)} times its size (a zip bomb?)"
    if problem:
        result.skipped[info.filename[:200]] = problem
    return problem


def _check_room(archive: Path, entries: list[zipfile.ZipInfo], target: Path) -> None:
    needed = sum(info.file_size for info in entries)
    free = shutil.disk_usage(target).free
    if needed + FREE_SPACE_MARGIN > free:
        raise DatasetError(
            f"{archive.name} unpacks to {needed / 2**20:.0f} MiB, but {target} has {free / 2**20:.0f} MiB free; "
            "nothing was unpacked. Free some space or upload fewer images at once."
        )


def _copy_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    """Copy one entry, never more bytes than its header declares (a forged header cannot fill the disk)."""
    copied = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(2**20):
            copied += len(chunk)
            if copied > info.file_size:
                raise DatasetError(f"{info.filename[:200]} in the zip holds more than its header says; not unpacked.")
            out.write(chunk)


def _import_one(name: str, write, target: Path, result: ImportResult) -> None:
    suffix = Path(name).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and suffix not in TEXT_EXTENSIONS:
        result.skipped[name] = f"not an image or caption file ({suffix or 'no extension'})"
        return
    try:
        check_safe_name(name, "file name")
    except ValueError:
        result.skipped[name] = "unusable file name"
        return
    dest = target / name
    if dest.exists():
        result.skipped[name] = "a file of that name is already in the folder (kept)"
        return
    with atomic_path(dest) as tmp:
        write(tmp)
    if suffix in IMAGE_EXTENSIONS:
        result.added.append(dest)
