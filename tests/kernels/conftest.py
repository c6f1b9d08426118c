"""Backend modes for the kernel tests: xla and interpreted ones run anywhere, compiled Pallas needs hardware."""
import jax
import pytest

_BACKEND = jax.default_backend()

# (impl, interpret): one test body runs the kernel compiled and interpreted.
KERNEL_MODES = [
    pytest.param("xla", False, id="xla"),   # the blocked jnp path: compiled everywhere
    pytest.param("triton", True, id="triton-interpret"),
    pytest.param("triton", False, id="triton", marks=[
        pytest.mark.gpu, pytest.mark.skipif(_BACKEND != "gpu", reason="needs a GPU")]),
    pytest.param("mosaic", True, id="mosaic-interpret"),
    pytest.param("mosaic", False, id="mosaic", marks=[
        pytest.mark.tpu, pytest.mark.skipif(_BACKEND != "tpu", reason="needs a TPU")]),
]
