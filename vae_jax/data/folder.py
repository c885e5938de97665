"""``folder:PATH`` datasets: the image files of a :class:`~vae_jax.data.folder_plan.FolderPlan` decoded by a
thread pool into one array (:func:`load_image_folder`) or a chunk at a time into an ``.npz``
(:func:`save_image_folder_npz`)."""

from __future__ import annotations

import concurrent.futures
import zipfile

import numpy as np

from vae_jax.data.dataset import reason, rows_per_chunk
from vae_jax.data.folder_plan import SKIP_HINT, FolderPlan, log_skipped, plan_image_folder, without
from vae_jax.data.npz import atomic_file, small_members
from vae_jax.data.resize import resize_image
from vae_jax.errors import DataError


def load_image_folder(path: str, image_size: int = 0, max_workers: int | None = None, skip_unreadable: bool = False):
    """Reads a directory of image files into ``uint8`` arrays.

    Layout:
      * Test split: the ``test/`` sub-folder when there is one (train is then ``train/`` if present, else
        everything else); otherwise the last 10% of all images after a fixed shuffle (seed 0) of the sorted
        paths. Either way each split comes in that fixed shuffled order, so its first images (the ones
        figures show) mix the classes.
      * Labels: when two or more sub-folders of a split hold images (and no image lies directly in it), each
        image's label is its folder's index in the sorted train folder names (``class_names``); folders are
        searched recursively. Otherwise the images are unlabelled.
      * Channels: C = 1 when every image is grayscale (Pillow modes 1, L, LA); otherwise C = 3 and grayscale
        images are repeated into RGB. Alpha is dropped; palette images count as RGB; 16-bit and float images
        are refused; animated formats give their first frame.
      * Size: ``image_size`` = 0 keeps the images' own size, which must then be the same for all; S > 0
        resizes the shorter side to S and crops the centre S x S (one bicubic resampling).

    Args:
      image_size: 0, or the side S of the square images to make.
      max_workers: the threads that decode the files straight into one preallocated array (Pillow releases the
        GIL while decoding and resampling; default: Python's ``ThreadPoolExecutor`` default).
      skip_unreadable: leave out the files that cannot be read or decoded (each listed on stderr) instead of
        stopping at the first; a split left without images is an error.

    Returns:
      ``(x_train, y_train, x_test, y_test, class_names, skipped)``; ``x`` are ``uint8`` ``[N, H, W, C]``, ``y``
      int32 ``[N]`` or None, ``class_names`` a tuple or None, ``skipped`` the paths of the files left out.

    Raises:
      DataError: one line naming the folder or the file and the problem.
    """
    plan = plan_image_folder(path, image_size, max_workers, skip_unreadable)
    paths = plan.train_paths + plan.test_paths
    images = np.empty((len(paths), *plan.shape), np.uint8)
    failed = {} if skip_unreadable else None
    _decode_images(plan, paths, images, max_workers, failed)
    if failed:  # files whose header read but whose pixels did not: left out now, a copy of the rest
        plan = without(plan, failed)
        images = images[[p not in failed for p in paths]]
    log_skipped(plan)
    n_train = len(plan.train_paths)  # the kept rows are still in order: train, then test
    return images[:n_train], plan.y_train, images[n_train:], plan.y_test, plan.class_names, tuple(plan.skipped)


def _without_undecodable(plan: FolderPlan, buffer: np.ndarray, max_workers: int | None) -> FolderPlan:
    """``plan`` without the files whose pixels cannot be decoded, found by decoding them into ``buffer``
    ``[rows, H, W, C]`` a chunk at a time."""
    paths, failed = plan.train_paths + plan.test_paths, {}
    for start in range(0, len(paths), len(buffer)):
        part = paths[start : start + len(buffer)]
        _decode_images(plan, part, buffer[: len(part)], max_workers, failed)
    return without(plan, failed) if failed else plan


def _decode_images(
    plan: FolderPlan, paths: list[str], out: np.ndarray, max_workers: int | None, failed: dict[str, str] | None = None
) -> None:
    """Decodes ``paths[i]`` into ``out[i]`` (``uint8`` ``[len(paths), H, W, C]``) with a thread pool. A file
    that cannot be decoded raises a DataError, or with ``failed`` (a dict) is recorded as ``failed[path] =
    message`` and its row of ``out`` is left as it was."""
    spec, image_size = plan.spec, plan.image_size
    target_mode = "L" if plan.shape[2] == 1 else "RGB"

    def decode(i: int) -> None:
        from PIL import Image

        try:
            with Image.open(paths[i]) as image:
                if image_size and image.format == "JPEG":
                    # Decode at a reduced scale when that still leaves the square >= image_size.
                    scale = image_size / min(image.size)
                    image.draft(image.mode, (int(np.ceil(image.size[0] * scale)), int(np.ceil(image.size[1] * scale))))
                image = image.convert(target_mode)  # decodes the whole file: truncation shows here
        except Exception as err:
            message = (
                f"--dataset {spec}: {paths[i]} cannot be decoded, the file is truncated or corrupted ({reason(err)})"
            )
            if failed is None:
                raise DataError(message + SKIP_HINT) from None
            failed[paths[i]] = message
            return
        if image_size:
            image = resize_image(image, image_size)
        out[i] = np.asarray(image).reshape(plan.shape)

    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
        list(pool.map(decode, range(len(paths))))  # re-raises the first failure; map cancels the rest


def save_image_folder_npz(
    folder: str,
    path: str,
    image_size: int = 0,
    notes: dict | None = None,
    chunk_bytes: int = 1 << 26,
    max_workers: int | None = None,
    skip_unreadable: bool = False,
) -> str:
    """Decodes the image folder ``folder`` into an uncompressed ``.npz`` at ``path`` a chunk at a time.

    The archive holds what :func:`save_npz` would write for ``load_dataset("folder:" + folder,
    image_size=image_size)``, but the images are decoded ``chunk_bytes`` at a time straight into it (written
    beside ``path``, renamed into place), so a set larger than memory can be decoded once and memory-mapped.
    With ``skip_unreadable`` the files are decoded once more first, to find the ones to leave out before the
    arrays' sizes are written; their paths are added to the notes as ``"skipped"``. Returns ``path``; raises
    a DataError as :func:`load_image_folder`.
    """
    plan = plan_image_folder(folder, image_size, max_workers, skip_unreadable)
    rows = rows_per_chunk((0, *plan.shape), chunk_bytes)  # uint8: a byte a pixel
    buffer = np.empty((min(rows, max(len(plan.train_paths), len(plan.test_paths))), *plan.shape), np.uint8)
    if skip_unreadable:
        plan = _without_undecodable(plan, buffer, max_workers)
        log_skipped(plan)
        if plan.skipped:
            notes = {**(notes or {}), "skipped": list(plan.skipped)}
    with atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, paths in (("x_train", plan.train_paths), ("x_test", plan.test_paths)):
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                _write_decoded(member, plan, paths, buffer, max_workers)
        for name, array in small_members(plan.y_train, plan.y_test, plan.class_names, notes).items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return path


def _write_decoded(member, plan: FolderPlan, paths: list[str], buffer: np.ndarray, max_workers: int | None) -> None:
    """Writes the ``.npy`` of ``paths`` decoded (``uint8`` ``[len(paths), H, W, C]``) to the open archive
    ``member``: its header, then the images decoded into ``buffer`` a chunk at a time."""
    header = {**np.lib.format.header_data_from_array_1_0(buffer[:0]), "shape": (len(paths), *plan.shape)}
    np.lib.format.write_array_header_2_0(member, header)
    for start in range(0, len(paths), len(buffer)):
        part = paths[start : start + len(buffer)]
        _decode_images(plan, part, buffer[: len(part)], max_workers)
        member.write(memoryview(buffer[: len(part)]).cast("B"))
