"""The package surface: what ``import jaxnm`` loads, the lazy Flax subpackages, no shadowing."""

import importlib
import pkgutil
import subprocess
import sys
import types

import jax.numpy as jnp

import jaxnm


def test_import_jaxnm_loads_no_flax_and_no_optional_dependency():
    script = (
        "import sys, jaxnm\n"
        "heavy = ('flax', 'orbax', 'ortools')\n"
        "print(sorted({k.split('.')[0] for k in sys.modules if k.split('.')[0] in heavy}))\n"
        "jaxnm.nnx.sparsify_model, jaxnm.linen.Dense, jaxnm.convert\n"
        "print('flax' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["[]", "True"], out


def test_core_install_imports_and_trains_without_optional_dependencies():
    """``pip install jaxnm`` alone: no OR-Tools ([exact]) and no orbax ([examples])."""
    script = """
import sys
sys.modules.update({"ortools": None, "orbax": None})  # as if not installed
import jax, jax.numpy as jnp, optax, jaxnm
assert jaxnm.__version__ == "0.2.0"
params = {"kernel": jax.random.normal(jax.random.key(0), (8, 8))}
tx = optax.chain(jaxnm.sparsify(2, 4, refresh_every=1), optax.sgd(0.1))
state = tx.init(params)
loss = lambda p, s: jnp.sum(jaxnm.apply_masks(p, jaxnm.current_masks(s))["kernel"] ** 2)
for _ in range(2):
    updates, state = tx.update(jax.grad(loss)(params, state), state, params)
    params = optax.apply_updates(params, updates)
assert bool(jaxnm.is_transposable_nm(jaxnm.current_masks(state)["kernel"], 2, 4))
try:
    jaxnm.transposable_mask(jnp.ones((4, 4)), 2, 4, method="exact")
except ImportError as e:
    print(e)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "needs OR-Tools" in out and "pip install jaxnm[exact]" in out, out


def test_lazy_subpackages_and_public_names():
    import jaxnm.linen
    import jaxnm.nnx

    assert jaxnm.nnx is sys.modules["jaxnm.nnx"] and jaxnm.linen is sys.modules["jaxnm.linen"]
    assert {"nnx", "linen", "convert"} <= set(dir(jaxnm))
    try:
        jaxnm.no_such_name  # noqa: B018
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")
    for name in jaxnm.__all__:
        assert getattr(jaxnm, name) is not None, name


def test_no_function_hides_a_module_and_masks_is_not_callable():
    for name in ("mvue", "nm_conv", "nm_dot_general"):
        fn = getattr(jaxnm.ops, name)
        assert isinstance(fn, types.FunctionType) and fn.__module__.startswith("jaxnm.ops._"), name
    assert isinstance(jaxnm.masks, types.ModuleType) and not callable(jaxnm.masks)
    assert type(jaxnm.masks) is types.ModuleType


def test_masks_stays_a_plain_module_after_importing_every_submodule():
    for info in pkgutil.walk_packages(jaxnm.__path__, "jaxnm."):
        importlib.import_module(info.name)
    exec("import jaxnm.masks.greedy", {})  # an `import` statement binding the submodule

    assert jaxnm.masks.nm_mask is jaxnm.nm_mask
    assert callable(jaxnm.masks.greedy.solve)
    state = jaxnm.sparsify(2, 4).init({"out": {"kernel": jnp.ones((16, 4))}, "b": jnp.ones(3)})
    assert jaxnm.current_masks(state)["out"]["kernel"].shape == (16, 4)
    assert jaxnm.current_masks(state)["b"] is None
    from jaxnm import masks

    assert masks is jaxnm.masks and not callable(masks)  # a plain module (0.2)
