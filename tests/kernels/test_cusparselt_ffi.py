"""cuSPARSELt extension: the build, loading, FFI registration and deviceless H100/H200
compiles of the forward, the backward and a whole train step (asserting that the cuSPARSELt
custom calls are in the compiled module).

Skipped, with the reason, where the extension cannot be built (no ``.[cusparselt]`` wheels or
no C++ compiler) or no compile-only GPU device exists (no jax CUDA plugin). Nothing here runs
on a GPU.
"""

import importlib.util
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jaxnm
import jaxnm.nnx
from jaxnm.kernels import cusparselt
from jaxnm.kernels.cusparselt import build, library
from jaxnm.kernels.targets import compile_for_gpu

COMPRESS, MATMUL, SEARCH = library.TARGETS


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    """The extension: the one CI built (``$JAXNM_CUSPARSELT_LIBRARY``, see ``.ci/run``), else
    built here into a temporary directory; loaded and registered."""
    built = os.environ.get(library.ENV_VAR)
    out = Path(built) if built else tmp_path_factory.mktemp("cusparselt") / "ext.so"
    if not out.is_file():
        try:
            build.build(out)
        except build.BuildError as error:
            pytest.skip(f"cannot build the cuSPARSELt extension here: {error}")
    mp = pytest.MonkeyPatch()
    mp.setenv(library.ENV_VAR, str(out))
    library.load.cache_clear()
    yield cusparselt.load()
    mp.undo()


def custom_calls(fn, device, *args) -> list[str]:
    """Custom-call targets of ``jit(fn)`` compiled for the compile-only ``device``."""
    hlo = compile_for_gpu(fn, device, *args).hlo
    return re.findall(r'custom_call_target="([^"]+)"', hlo)


def test_extension_loads_and_registers(extension):
    assert cusparselt.available()
    version = cusparselt.version()
    assert version == extension.jaxnm_cslt_header_version() and version >= 800
    for symbol in library.TARGETS.values():
        assert getattr(extension, symbol) is not None


def test_forward_compiles_for_gpu(extension, gpu_target):
    x = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)

    def forward(x, w):
        return cusparselt.matmul(cusparselt.compress(w.T), x, transpose_b=True, alg_id=3)

    targets = custom_calls(forward, gpu_target, x, w)
    assert targets.count(COMPRESS) == 1 and targets.count(MATMUL) == 1, targets


def test_nm_matmul_backend_compiles_for_gpu(extension, gpu_target):
    """``nm_matmul(..., backend="cusparselt")`` and its gradient: forward and dx (with
    ``c_t``) on cuSPARSELt."""
    w = jax.random.normal(jax.random.key(0), (256, 128))
    mask = jaxnm.transposable_mask(w, 2, 4, method="greedy")
    c = jaxnm.compress(w.astype(jnp.float16), mask, 2, 4, axis=0)
    c_t = jaxnm.compressed.transpose(c)
    x = jax.ShapeDtypeStruct((20, 256), jnp.float16)

    def f(x):
        y = jaxnm.kernels.nm_matmul(x, c, c_t=c_t, backend="cusparselt")
        return jnp.sum(y.astype(jnp.float32) ** 2)

    targets = custom_calls(jax.grad(f), gpu_target, x)
    assert targets.count(COMPRESS) == 2 and targets.count(MATMUL) == 2, targets


def mvue_2_4(g, key):
    return jaxnm.mvue(g, 2, 4, key, axis=0)


def test_backward_compiles_for_gpu(extension, gpu_target):
    """Forward + both gradients: three compressions (Wᵀ, W, dyᵀ) and three sparse GEMMs,
    no dense dot left for the three GEMMs."""
    x = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16)
    mask = jnp.ones((256, 512), bool)

    def loss(x, w, key):
        y = cusparselt.cusparselt_linear(x, w, mask, prune=mvue_2_4, key=key)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    def grads(x, w):
        return jax.grad(loss, (0, 1))(x, w, jax.random.key(0))

    targets = custom_calls(grads, gpu_target, x, w)
    assert targets.count(COMPRESS) == 3 and targets.count(MATMUL) == 3, targets
    assert not any("gemm" in t.lower() or "cublas" in t.lower() for t in targets), targets


def check_train_step(targets: list[str], layers: int = 2) -> None:
    """An MLP stack's step: three sparse GEMMs a layer, less the first one's input gradient."""
    gemms = 3 * layers - 1
    assert targets.count(COMPRESS) == gemms and targets.count(MATMUL) == gemms, targets


@pytest.mark.slow
def test_device_check_train_step_compiles_for_gpu(extension, gpu_target):
    """The device check's train step (the GPT example, tiny: sparsify with transposable 2:4
    masks refreshed in the step, MVUE 2:4, sparsify_model(backend="cusparselt")) compiles
    deviceless with every block's four linears on cuSPARSELt; the dense step has none."""
    section = _device_check_section()
    shape = section.GPT_SMOKE_SHAPE
    for backend in ("cusparselt", "dense"):
        step, model, optimizer, data = section.gpt_train_step(backend, shape, 2)
        graphdef, state = nnx.split((model, optimizer))

        def fn(state, inputs, labels, graphdef=graphdef, step=step):
            model, optimizer = nnx.merge(graphdef, state)
            loss = step(model, optimizer, inputs, labels)
            return loss, nnx.state((model, optimizer))

        targets = custom_calls(fn, gpu_target, state, *data)
        if backend == "dense":
            assert COMPRESS not in targets and MATMUL not in targets, targets
        else:
            # 4 linears a block, 3 sparse GEMMs each (the first linear's input gradient is
            # needed too: its input is the residual stream).
            gemms = 3 * 4 * shape["depth"]
            assert targets.count(COMPRESS) == gemms and targets.count(MATMUL) == gemms, targets


def test_unregistered_target_fails_to_compile(gpu_target):
    """Without registration XLA refuses the custom call: registration is what the tests
    above exercise."""

    def f(x):
        return jax.ffi.ffi_call("jaxnm_cslt_not_registered", jax.ShapeDtypeStruct((), jnp.int32))(x)

    with pytest.raises(Exception, match="(?i)no.*(handler|registered)"):
        custom_calls(f, gpu_target, jax.ShapeDtypeStruct((16,), jnp.float32))


def _device_check_section():
    path = Path(__file__).parents[2] / "benchmarks" / "gpu_check_cusparselt.py"
    spec = importlib.util.spec_from_file_location("gpu_check_cusparselt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_check_section_skips_on_cpu():
    section = _device_check_section()
    out = section.section(smoke=True)
    assert "no CUDA GPU" in out["skipped"] or "not built" in out["skipped"], out


@pytest.mark.parametrize(
    "gpu_target", ["h100", pytest.param("h200", marks=pytest.mark.slow)], indirect=True
)
def test_device_check_section_compiles_for_gpu(extension, gpu_target):
    """The section's GPU programs (the GEMM layouts and the training layer it times) compile
    deviceless, so the device check cannot rot before a GPU runs it."""
    section = _device_check_section()
    x, w, mask, cot = section.layer_case(64, 128, 64)

    def layer(x, w, c, backend="cusparselt"):
        return section.training_grads(x, w, mask, c, backend=backend)

    targets = custom_calls(layer, gpu_target, x, w, cot)
    assert targets.count(COMPRESS) == 3 and targets.count(MATMUL) == 3, targets
    dense = custom_calls(lambda x, w, c: layer(x, w, c, "dense"), gpu_target, x, w, cot)
    assert COMPRESS not in dense and MATMUL not in dense


@pytest.mark.parametrize(
    "gpu_target", ["h100", pytest.param("h200", marks=pytest.mark.slow)], indirect=True
)
def test_sparsify_model_train_step_compiles_for_gpu(extension, gpu_target):
    """``jaxnm.nnx.sparsify_model(..., backend="cusparselt")``: an NNX MLP's jitted train step
    (transposable 2:4 masks with greedy refresh, MVUE 2:4) has the three sparse GEMMs of every
    layer on cuSPARSELt (less the first layer's unused input gradient)."""

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(128, 256, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=rngs)
            self.l2 = nnx.Linear(256, 128, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    tx = optax.chain(jaxnm.sparsify(2, 4, transposable=True, refresh_every=2), optax.sgd(0.1))
    optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
    jaxnm.nnx.sparsify_model(
        model, optimizer, grad_sparsity=jaxnm.MVUE(2, 4), rngs=nnx.Rngs(1), backend="cusparselt"
    )
    graphdef, state = nnx.split((model, optimizer))

    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            return jnp.mean((model(x).astype(jnp.float32) - y) ** 2)

        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    x = jax.ShapeDtypeStruct((128, 128), jnp.bfloat16)
    y = jax.ShapeDtypeStruct((128, 128), jnp.float32)
    check_train_step(custom_calls(step, gpu_target, state, x, y))


def test_vmap_compiles_for_gpu(extension, gpu_target):
    """``jax.vmap`` of compress + matmul (a batch of 3 layers) compiles deviceless: the
    handlers run once per batch element (``vmap_method="sequential"``, a loop on the device)."""
    x = jax.ShapeDtypeStruct((3, 64, 128), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 128, 64), jnp.bfloat16)

    def forward(x, w):
        return cusparselt.matmul(cusparselt.compress(w.T), x, transpose_b=True)

    hlo = compile_for_gpu(jax.vmap(forward), gpu_target, x, w).hlo
    targets = re.findall(r'custom_call_target="([^"]+)"', hlo)
    assert targets.count(COMPRESS) == 1 and targets.count(MATMUL) == 1, targets
    assert re.search(r"\bwhile\(", hlo), "expected the sequential vmap loop"
