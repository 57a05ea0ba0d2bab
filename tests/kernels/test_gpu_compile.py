"""Deviceless GPU compiles: every GPU path of jaxnm through XLA's GPU compiler for H100/H200.

Each test compiles with ``jaxnm.kernels.targets.compile_for_gpu`` (a compile-only CUDA
topology from XLA's target config; Triton -> LLVM -> PTX for sm_90a, on this CPU host) and
asserts on what came out: the kernel's custom call in the optimised HLO, tensor-core
instructions in the PTX (``wgmma`` for large token counts, ``mma.sync`` or ``wgmma`` for
16-bit inputs), no host callback in the sparse train step. Nothing runs on a GPU here.
Skipped, with the reason, only when the jax CUDA plugin is missing (``tests/conftest.py``).

The default run compiles a representative subset; ``-m slow`` the whole matrix
(bf16/fp16/fp32 x T in {1, 16, 128, 4096} x K = N in {4096, 8192} x both targets).
"""

import itertools
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import jaxnm
import jaxnm.nnx
from jaxnm import compressed as cz
from jaxnm.kernels import nm_matmul
from jaxnm.kernels.targets import compile_for_gpu

from .conftest import GPU_TARGETS, gpu_target_device

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRITON_CALL = '"__gpu$xla.gpu.triton"'
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}
TOKENS = (1, 16, 128, 4096)
SIZES = (4096, 8192)


def _weight(size, dtype, n=2, m=4, transposed=False):
    w = jax.ShapeDtypeStruct((size, size), dtype)
    c = jax.eval_shape(lambda w: jaxnm.compress(w, jaxnm.nm_mask(w, n, m), n, m), w)
    if transposed:
        return c, jax.eval_shape(cz.transpose, c)
    return c


def _calls(hlo: str, target: str) -> int:
    return len(re.findall(rf"custom_call_target={re.escape(target)}", hlo))


def _check_forward(target, dtype_name, tokens, size):
    device = gpu_target_device(target)
    dtype = DTYPES[dtype_name]
    x = jax.ShapeDtypeStruct((tokens, size), dtype)
    out = compile_for_gpu(nm_matmul, device, x, _weight(size, dtype), ptx=True)
    assert _calls(out.hlo, TRITON_CALL) == 1, "the Triton kernel is missing from the module"
    assert "nm_matmul_gpu" in out.ptx and ".target sm_90a" in out.ptx
    if dtype != jnp.float32:  # fp32 runs at HIGHEST precision: FMA, no tensor cores
        assert "mma.sync" in out.ptx or "wgmma" in out.ptx, "no tensor-core MMA in the PTX"
    if tokens >= 128 and dtype != jnp.float32:
        assert "wgmma" in out.ptx, "no Hopper wgmma for a compute-bound tile"


FORWARD_SUBSET = [
    ("h100", "bf16", 16, 4096),
    ("h100", "bf16", 4096, 4096),
    ("h200", "fp16", 128, 8192),
    ("h200", "fp32", 1, 4096),
]


@pytest.mark.parametrize("target,dtype,tokens,size", FORWARD_SUBSET)
def test_forward_compiles(target, dtype, tokens, size):
    _check_forward(target, dtype, tokens, size)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,dtype,tokens,size",
    [c for c in itertools.product(GPU_TARGETS, DTYPES, TOKENS, SIZES) if c not in FORWARD_SUBSET],
)
def test_forward_compiles_full_matrix(target, dtype, tokens, size):
    _check_forward(target, dtype, tokens, size)


def _check_backward(target, dtype_name, tokens, size):
    device = gpu_target_device(target)
    dtype = DTYPES[dtype_name]
    c, c_t = _weight(size, dtype, transposed=True)

    def loss(x, c, c_t):
        return jnp.sum(jnp.sin(nm_matmul(x, c, c_t=c_t).astype(jnp.float32)))

    grad = jax.grad(loss, argnums=(0, 1), allow_int=True)
    x = jax.ShapeDtypeStruct((tokens, size), dtype)
    out = compile_for_gpu(grad, device, x, c, c_t)
    # Forward kernel (its output feeds sin's derivative) and dX = dY·Wᵀ through c_t.
    assert _calls(out.hlo, TRITON_CALL) == 2, "forward and dX must both use the Triton kernel"


@pytest.mark.parametrize("target,dtype,tokens,size", [("h100", "bf16", 128, 4096)])
def test_backward_compiles(target, dtype, tokens, size):
    _check_backward(target, dtype, tokens, size)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,dtype,tokens,size", list(itertools.product(GPU_TARGETS, DTYPES, TOKENS, SIZES))
)
def test_backward_compiles_full_matrix(target, dtype, tokens, size):
    _check_backward(target, dtype, tokens, size)


def _vit_train_step(method: str):
    """A jitted-able functional sparse train step of a small NNX ViT, and its inputs."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from nmexamples.models import ViT

    model = ViT((16, 16, 3), 10, patch=4, dim=64, depth=1, heads=2, mlp_dim=128, rngs=nnx.Rngs(0))
    tx = optax.chain(jaxnm.sparsify(2, 4, method=method, refresh_every=2), optax.adamw(1e-3))
    optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)
    jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=jaxnm.MVUE(2, 4), rngs=nnx.Rngs(1))
    graphdef, state = nnx.split((model, optimizer))

    def step(state, images, labels):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)  # refreshes the masks when the count is due
        return loss, nnx.state((model, optimizer))

    images = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)
    return step, (state, images, labels)


def _callbacks(hlo: str) -> list[str]:
    return [t for t in re.findall(r'custom_call_target="([^"]+)"', hlo) if "callback" in t]


@pytest.mark.parametrize("target", ["h200"])
def test_sparse_train_step_compiles_without_host_callbacks(target):
    device = gpu_target_device(target)
    step, args = _vit_train_step("greedy")
    out = compile_for_gpu(step, device, *args)
    assert not _callbacks(out.hlo), "a host callback in the greedy sparse train step"
    # The greedy refresh is inside the step: a conditional whose branch solves the masks.
    assert "conditional" in out.hlo


@pytest.mark.slow
@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize("method", ["greedy", "exact"])
def test_sparse_train_step_compiles_all(target, method):
    device = gpu_target_device(target)
    step, args = _vit_train_step(method)
    out = compile_for_gpu(step, device, *args)
    # method="exact" solves on the host (OR-Tools): its callback must show up.
    assert bool(_callbacks(out.hlo)) == (method == "exact")
