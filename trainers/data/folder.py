"""An ImageNet-layout folder, scanned once and shared by the torchvision and DALI loaders.

``<path>/<train_dir>/<class>/<image>`` and ``<path>/<val_dir>/<class>/<image>``. Both loaders read the
same list made here, in torchvision's order (sorted class names → labels 0..C-1, files sorted within
each folder walk, ImageFolder's extensions), so a DALI run and a torchvision run label every image
identically, and the shared index arithmetic in :mod:`trainers.data.base` picks the same files for a
rank in the same order.

Bad data, case by case (docs/reliability.md):

- a missing ``path``/``train_dir``/``val_dir``, a split without class folders, an **empty class folder**
  (no image file), or **train and val with different class folders** → an error naming the folder
  (labels come from the sorted class names: a class missing in one split would shift every later label);
- a **non-image file** (an extension outside ``IMG_EXTENSIONS``: ``README.txt``, ``.DS_Store``, a file
  directly in ``train/``) → skipped, never labelled; the count is kept in ``FolderSplits.skipped`` and
  logged once as a warning by the scan (``normstudy.data`` logger) and in ``describe``;
- a **corrupt image** → with ``verify=True`` (what ``study.preflight`` runs once on the driver, before
  anything is written) an error naming the file: every image file must be non-empty and start with the
  magic bytes of an image format PIL and DALI decode (by content, so ImageNet's PNG named ``.JPEG``
  passes); a JPEG without its end-of-image marker or a PNG without ``IEND`` at the end (a truncated copy)
  is decoded fully with PIL and refused if that fails. Cost: two small reads per file (threads), a full
  decode only for the rare file without its end marker. Damage *inside* an intact-looking file is found
  when it is decoded: :func:`open_image` and :func:`first_undecodable` name the file there. Workers scan
  with ``verify=False`` (listing only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

from trainers.config import DataSpec

# ImageNet statistics (torchvision's reference recipe): [0, 1] scale for torchvision, x255 for DALI.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger("normstudy.data")

# Magic bytes of the formats behind IMG_EXTENSIONS (PIL and DALI both decode by content, not by name).
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"P1", b"P2", b"P3",
         b"P4", b"P5", b"P6", b"GIF87a", b"GIF89a")
JPEG_EOI, PNG_IEND = b"\xff\xd9", b"IEND\xaeB`\x82"
TAIL_BYTES = 64  # a JPEG may carry a little padding after its end-of-image marker
VERIFY_THREADS = 16  # header reads are I/O bound (network file systems especially)


@dataclass(frozen=True)
class FolderSplits:
    """Both splits of a folder: ``(path, label)`` lists in sorted order, and the class names."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    train_root: Path
    val_root: Path
    skipped: int = 0  # non-image files left out of both splits (logged by the scan)
    duplicates: int = 0  # files reached again through a link in the same class, listed once (logged)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Images per class name in ``split`` ("train" or "val")."""
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.train if split == "train" else self.val:
            counts[self.classes[label]] += 1
        return counts


def scan_folder(data: DataSpec, *, verify: bool = False) -> FolderSplits:
    """Scan train and val; raise FileNotFoundError / ValueError with the path (or file) and the fix.

    ``verify``: also check every image file's header (and, without an end marker, its decode) — see the
    module docstring; the preflight does this once, workers do not.
    """
    if not data.path:
        raise ValueError("data.path: required when data.kind is 'folder'; give an ImageNet-layout folder")
    root = Path(data.path).expanduser().absolute()  # workers may change directory later
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.path: folder '{root}' not found; give an ImageNet-layout folder "
            f"(with {data.train_dir}/ and {data.val_dir}/ inside) or use data.kind: generated"
        )
    train_root, val_root = root / data.train_dir, root / data.val_dir
    for field, split in (("data.train_dir", train_root), ("data.val_dir", val_root)):
        if not split.is_dir():
            raise FileNotFoundError(
                f"{field}: folder '{split}' not found; {root} needs one sub-folder per class in "
                f"{data.train_dir}/ and {data.val_dir}/, or set {field} to the right name"
            )
    train_classes, class_to_idx = _classes(train_root)
    val_classes, _ = _classes(val_root)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"data: class folders of '{train_root}' and '{val_root}' differ "
            f"(only in train: {_few(only_train)}; only in val: {_few(only_val)}); "
            "both splits need the same class sub-folders"
        )
    walk = _Walk()
    train, skipped_train = walk.samples(train_root, class_to_idx)
    val, skipped_val = walk.samples(val_root, class_to_idx)
    skipped = skipped_train + skipped_val
    if skipped:
        log.warning("data: skipped %d non-image file(s) under %s (e.g. %s); only %s files are read",
                    len(skipped), root, _few([str(Path(p).relative_to(root)) for p in skipped], 3),
                    "/".join(IMG_EXTENSIONS))
    if walk.duplicates:
        log.warning("data: %d file(s) or folder(s) reached a second time through a link were counted once "
                    "(e.g. %s is %s)", len(walk.duplicates), *walk.duplicates[0])
    if verify:
        verify_images([p for p, _ in train] + [p for p, _ in val])
    return FolderSplits(tuple(train_classes), train, val, train_root, val_root, len(skipped), len(walk.duplicates))


def _classes(split: Path) -> tuple[list[str], dict[str, int]]:
    try:
        return find_classes(str(split))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"data: '{split}' has no class sub-folders; put each class's images in its own sub-folder"
        ) from None


class _Walk:
    """One scan's listing of both splits, each file and folder counted once (docs/reliability.md, links).

    Links are followed, into or out of the tree, but a file or folder is identified by what it is (device
    and inode of its target), not by its path: a file (or folder) reached a second time in the **same class
    of the same split** — a link to a sibling, a folder link back into the class, a hard link — is listed
    once (counted in ``duplicates``, logged once); reached again in **another class or the other split**, it
    is an error naming both paths (one image cannot have two labels, and a test image must not be trained
    on). A link cycle is walked once. Regular files need no ``stat`` (``scandir`` gives their inode), so
    the listing costs one ``stat`` per folder and per link.
    """

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], tuple[str, str]] = {}  # (dev, inode) -> (first path, "split/class")
        self.duplicates: list[tuple[str, str]] = []  # (path, the first path of the same file)

    def samples(self, split: Path, class_to_idx: dict[str, int]) -> tuple[tuple[tuple[str, int], ...], list[str]]:
        """``(path, label)`` in torchvision's ``make_dataset`` order, and the non-image files skipped."""
        samples: list[tuple[str, int]] = []
        skipped = [str(e.path) for e in os.scandir(split) if not e.is_dir()]  # files beside the class folders
        for name in sorted(class_to_idx):
            label, folder, found = class_to_idx[name], split / name, 0
            where = f"{split.name}/{name}"
            for entry, dev in self._files(folder, where):
                path = entry.path
                if not has_file_allowed_extension(path, IMG_EXTENSIONS):
                    skipped.append(path)
                    continue
                if self._first(self._identity(entry, dev), path, where):
                    samples.append((path, label))
                    found += 1
            if not found:
                raise FileNotFoundError(
                    f"data: class folder '{folder}' has no image files ({'/'.join(IMG_EXTENSIONS)}); add its "
                    "images or remove the folder from both splits"
                )
        return tuple(samples), sorted(skipped)

    def _files(self, folder: Path, where: str) -> list[tuple[os.DirEntry, int]]:
        """Every file under ``folder`` with its folder's device, in ``sorted(os.walk(folder))`` order; a
        folder already walked (a link cycle, a second link to it) is not walked again."""
        listed: list[tuple[str, list[os.DirEntry], int]] = []
        stack = [str(folder)]
        while stack:
            top = stack.pop()
            try:
                st = os.stat(top)
                entries = sorted(os.scandir(top), key=lambda e: e.name)
            except OSError as err:
                raise ValueError(f"data: cannot list '{top}' ({err.strerror}); fix the folder or its "
                                 "permissions") from None
            if not self._first((st.st_dev, st.st_ino), top, where):
                continue
            listed.append((top, [e for e in entries if not e.is_dir()], st.st_dev))
            stack.extend(e.path for e in reversed(entries) if e.is_dir())
        listed.sort(key=lambda item: item[0])
        return [(e, dev) for _, files, dev in listed for e in files]

    @staticmethod
    def _identity(entry: os.DirEntry, dev: int) -> tuple[int, int]:
        if not entry.is_symlink():
            return dev, entry.inode()
        try:
            st = os.stat(entry.path)
        except OSError:
            raise ValueError(f"data: '{entry.path}' is a link to a missing file ({os.readlink(entry.path)}); "
                             "remove the link or restore its target") from None
        return st.st_dev, st.st_ino

    def _first(self, key: tuple[int, int], path: str, where: str) -> bool:
        """True the first time a file or folder is met; False (a duplicate) when met again in the same class;
        an error when met again in another class or split."""
        first = self.seen.setdefault(key, (path, where))
        if first == (path, where):
            return True
        if first[1] != where:
            raise ValueError(f"data: '{path}' (in {where}) is the same file or folder as '{first[0]}' (in "
                             f"{first[1]}), through a link; an image cannot be in two classes or splits, "
                             "remove the link")
        self.duplicates.append((path, first[0]))
        return False


def verify_images(paths: Sequence[str]) -> None:
    """Raise ValueError naming the first (in ``paths`` order) file that is not a decodable-looking image."""
    if not paths:
        return
    with ThreadPoolExecutor(max_workers=min(VERIFY_THREADS, len(paths))) as pool:
        for path, problem in zip(paths, pool.map(_image_problem, paths, chunksize=256), strict=True):
            if problem:
                raise ValueError(f"data: '{path}' {problem}; remove or replace the file")


def _image_problem(path: str) -> str | None:
    """What is wrong with one image file (None: looks fine). Two small reads; a decode only when the
    file lacks its format's end marker."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read()
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "is empty (0 bytes)"
    if not (head.startswith(MAGIC) or head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return f"is not an image (it starts with {head[:8]!r}, no image format's signature)"
    truncated = (head.startswith(b"\xff\xd8") and JPEG_EOI not in tail
                 or head.startswith(b"\x89PNG") and not tail.endswith(PNG_IEND))
    if truncated:
        err = decode_error(path)
        if err:
            return f"is truncated or corrupt ({err})"
    return None


def decode_error(path: str) -> str | None:
    """Decode one file fully with PIL; the error as text, or None when it decodes."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.convert("RGB").load()
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return f"{type(err).__name__}: {err}"
    return None


def open_image(path: str):
    """torchvision's ``default_loader`` with the file named in the error: a decode failure mid-training
    says which file to replace instead of PIL's bare 'Truncated File Read'."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception as err:  # noqa: BLE001 - any decode failure
        raise ValueError(f"data: cannot decode '{path}' ({type(err).__name__}: {err}); remove or replace "
                         "the file") from err


def first_undecodable(paths: Iterable[str]) -> str | None:
    """The first of ``paths`` PIL cannot decode (for naming the file after a DALI batch fails to decode)."""
    for path in paths:
        if decode_error(path):
            return path
    return None


def _few(names: list[str], n: int = 5) -> str:
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def describe(loader: str, splits: FolderSplits, data: DataSpec) -> str:
    skipped = f", {splits.skipped} non-image files skipped" if splits.skipped else ""
    skipped += f", {splits.duplicates} linked duplicates counted once" if splits.duplicates else ""
    return (f"folder ({loader}): {len(splits.classes)} classes, {len(splits.train)} train / "
            f"{len(splits.val)} val, {data.image_size} px, {splits.train_root.parent}{skipped}")
