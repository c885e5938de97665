"""What a ``folder:PATH`` dataset holds, found from the listing and the files' headers (nothing decoded):
the splits, the labels (class sub-folders), the channels and the image size (:class:`FolderPlan`)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys

import numpy as np

from vae_jax.data.dataset import reason
from vae_jax.data.resize import log_resizing
from vae_jax.errors import DataError

_FOLDER_SPLIT_SEED = 0


def folder_fingerprint(path: str) -> dict:
    """What the image files under ``path`` are, in brief: their number, total bytes and newest modification
    time (nanoseconds). It changes when a file is added, removed, replaced or rewritten."""
    stats = [os.stat(name) for name in _images_under(path)]
    newest = max((stat.st_mtime_ns for stat in stats), default=0)
    return {"files": len(stats), "bytes": sum(stat.st_size for stat in stats), "newest_mtime_ns": newest}


# Formats Pillow reads (its write-only or container formats such as PDF are left out).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".bmp",
    ".dib",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
)
_GRAY_MODES = frozenset({"1", "L", "LA", "La"})
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(directory: str) -> list[str]:
    """Every image file below ``directory`` (recursively, hidden entries skipped), sorted."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(parent, f) for f in sorted(files) if _is_image_file(f))
    return found


def _list_split(
    split_root: str, spec: str, exclude: tuple[str, ...] = (), min_classes: int = 2
) -> tuple[list[str], list[str] | None]:
    """Image paths of one split and their class folder names (None when unlabelled): labelled when
    ``min_classes`` or more sub-folders hold images and no image lies directly in ``split_root``."""
    entries = sorted(e for e in os.listdir(split_root) if not e.startswith(".") and e not in exclude)
    loose = [e for e in entries if _is_image_file(e) and os.path.isfile(os.path.join(split_root, e))]
    folders = [e for e in entries if os.path.isdir(os.path.join(split_root, e))]
    classes = {e: paths for e in folders if (paths := _images_under(os.path.join(split_root, e)))}
    in_classes = [p for paths in classes.values() for p in paths]
    if len(classes) >= min_classes:
        if loose:
            raise DataError(
                f"--dataset {spec}: {split_root} holds both images ({loose[0]}) and class sub-folders "
                f"({', '.join(list(classes)[:3])}); put every image in a class folder, or none"
            )
        return in_classes, [name for name, paths in classes.items() for _ in paths]
    return [os.path.join(split_root, e) for e in loose] + in_classes, None


def _fixed_shuffle(paths: list[str], names: list[str] | None):
    """``paths`` (and their class names) in an order fixed by ``_FOLDER_SPLIT_SEED``."""
    order = np.random.default_rng(_FOLDER_SPLIT_SEED).permutation(len(paths))
    return [paths[i] for i in order], None if names is None else [names[i] for i in order]


SKIP_HINT = "; pass --skip-unreadable to leave such files out"


def _header_or_reason(path: str, spec: str, skip_unreadable: bool):
    """(mode, (width, height)) of an image file, read from its header only; when it cannot be read, with
    ``skip_unreadable`` the one-line reason (a str), else a DataError."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except Exception as err:  # UnidentifiedImageError, OSError, decompression-bomb errors...
        message = f"--dataset {spec}: {path} is not a readable image: not an image, empty or truncated ({reason(err)})"
        if skip_unreadable:
            return message
        raise DataError(message + SKIP_HINT) from None


def without(plan: FolderPlan, unreadable: dict[str, str]) -> FolderPlan:
    """``plan`` without the files ``unreadable`` maps to their one-line reasons (added to ``plan.skipped``);
    a DataError when a split is left without images."""

    def keep(paths, labels, split):
        kept = [i for i, p in enumerate(paths) if p not in unreadable]
        if not kept:
            raise DataError(
                f"--dataset {plan.spec}: --skip-unreadable left the {split} split without images "
                f"(all {len(paths)} of its files are unreadable)"
            )
        return {f"{split}_paths": [paths[i] for i in kept], f"y_{split}": None if labels is None else labels[kept]}

    train, test = keep(plan.train_paths, plan.y_train, "train"), keep(plan.test_paths, plan.y_test, "test")
    return dataclasses.replace(plan, **train, **test, skipped={**plan.skipped, **unreadable})


def log_skipped(plan: FolderPlan) -> None:
    """One stderr line per file --skip-unreadable left out, then their count."""
    if not plan.skipped:
        return
    for message in plan.skipped.values():
        print(f"data: skipped {message.removeprefix(f'--dataset {plan.spec}: ')}", file=sys.stderr)
    print(
        f"data: --skip-unreadable left out {len(plan.skipped)} unreadable files of --dataset {plan.spec}; "
        f"{len(plan.train_paths)} train and {len(plan.test_paths)} test images remain",
        file=sys.stderr,
    )


@dataclasses.dataclass(frozen=True)
class FolderPlan:
    """What :func:`load_image_folder` reads, found from the listing and the files' headers (nothing decoded)."""

    spec: str
    train_paths: list[str]
    test_paths: list[str]
    y_train: np.ndarray | None
    y_test: np.ndarray | None
    class_names: tuple[str, ...] | None
    shape: tuple[int, int, int]  # (H, W, C) of the arrays made
    image_size: int
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why (--skip-unreadable)


def plan_image_folder(path: str, image_size: int, max_workers: int | None, skip_unreadable: bool = False) -> FolderPlan:
    """The splits, labels, channels and size of :func:`load_image_folder` (see its docstring)."""
    spec = f"folder:{path}"
    if not path:
        raise DataError("--dataset folder: needs a directory, e.g. folder:data/faces")
    if not os.path.isdir(path):
        raise DataError(f"--dataset {spec}: no such directory")
    train_paths, train_names, test_paths, test_names = _split_paths(path, spec)
    class_names, y_train, y_test = _labels(spec, train_names, test_names)
    plan = FolderPlan(spec, train_paths, test_paths, y_train, y_test, class_names, (0, 0, 0), image_size)
    paths = train_paths + test_paths
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        headers = list(pool.map(lambda p: _header_or_reason(p, spec, skip_unreadable), paths))
    unreadable = {p: h for p, h in zip(paths, headers) if isinstance(h, str)}
    plan = without(plan, unreadable) if unreadable else plan
    headers = [h for h in headers if not isinstance(h, str)]
    return dataclasses.replace(plan, shape=_array_shape(plan, headers))


def _split_paths(path: str, spec: str):
    """``(train_paths, train_names, test_paths, test_names)`` of the folder ``path``, each split in a fixed
    shuffled order; the names are the images' class folders, or None when the split is unlabelled."""
    test_root = os.path.join(path, "test")
    if os.path.isdir(test_root):
        train_root = os.path.join(path, "train")
        root, exclude = (train_root, ()) if os.path.isdir(train_root) else (path, ("test",))
        train_paths, train_names = _list_split(root, spec, exclude=exclude)
        # A labelled train split makes even a single test class folder a label.
        test_paths, test_names = _list_split(test_root, spec, min_classes=1 if train_names else 2)
        if not test_paths:
            raise DataError(f"--dataset {spec}: the test split {test_root} holds no image files")
        # Listed class by class; shuffled so that the first test images (shown in figures) mix the classes.
        train_paths, train_names = _fixed_shuffle(train_paths, train_names)
        test_paths, test_names = _fixed_shuffle(test_paths, test_names)
    else:
        all_paths, all_names = _fixed_shuffle(*_list_split(path, spec))
        n_test = max(1, int(round(0.1 * len(all_paths)))) if len(all_paths) > 1 else 0
        split = len(all_paths) - n_test
        train_paths, test_paths = all_paths[:split], all_paths[split:]
        train_names, test_names = (None, None) if all_names is None else (all_names[:split], all_names[split:])
    if not train_paths:
        raise DataError(
            f"--dataset {spec}: no image files for the train split ({', '.join(IMAGE_EXTENSIONS[:6])}, ...)"
        )
    if not test_paths:
        raise DataError(f"--dataset {spec}: only one image; cannot split it into train and test")
    return train_paths, train_names, test_paths, test_names


def _labels(spec: str, train_names: list[str] | None, test_names: list[str] | None):
    """``(class_names, y_train, y_test)`` from the images' class folder names: labels index the sorted train
    folder names; all None when the splits are unlabelled."""
    if (train_names is None) != (test_names is None):
        labelled = "train" if train_names is not None else "test"
        raise DataError(f"--dataset {spec}: only the {labelled} split has class sub-folders; give both or neither")
    if train_names is None:
        return None, None, None
    class_names = tuple(sorted(set(train_names)))
    unknown = sorted(set(test_names) - set(class_names))
    if unknown:
        raise DataError(f"--dataset {spec}: test class folder {unknown[0]!r} has no train folder")
    index = {name: k for k, name in enumerate(class_names)}
    y_train, y_test = (np.array([index[n] for n in names], np.int32) for names in (train_names, test_names))
    return class_names, y_train, y_test


def _array_shape(plan: FolderPlan, headers: list[tuple[str, tuple[int, int]]]) -> tuple[int, int, int]:
    """``(H, W, C)`` of the arrays made from the plan's files, whose headers are ``(mode, (width, height))``."""
    paths = plan.train_paths + plan.test_paths
    for p, (mode, _) in zip(paths, headers):
        if mode in _WIDE_MODES:
            raise DataError(
                f"--dataset {plan.spec}: {p} is a {mode} (16-bit or float) image; only 8-bit images are read"
            )
    channels = 1 if all(mode in _GRAY_MODES for mode, _ in headers) else 3
    if plan.image_size:
        log_resizing(plan.spec, {size for _, size in headers}, plan.image_size)
        return plan.image_size, plan.image_size, channels
    size_a = headers[0][1]
    different = [(p, size) for p, (_, size) in zip(paths, headers) if size != size_a]
    if different:
        path_a, (path_b, size_b) = paths[0], different[0]
        raise DataError(
            f"--dataset {plan.spec}: images differ in size ({path_a} is {size_a[1]}x{size_a[0]}, {path_b} is "
            f"{size_b[1]}x{size_b[0]}, height x width); pass --image-size N to resize and centre-crop them all to N x N"
        )
    width, height = size_a
    return height, width, channels
