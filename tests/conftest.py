import os

import pytest
import torch

# Triton decides at decoration time whether a @triton.jit function is compiled or interpreted, so
# the interpreter must be switched on before any test module imports the kernels (on a machine
# without CUDA, the kernels can only run in the interpreter).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _compiled_cpu_loop_built_first():
    """Build the CPU backend's compiled loops (if this machine can) before any test, so that the
    build, about 30 s on a fresh machine, never happens inside a test's subprocess or timing."""
    from gatedrnn.backends.cpu import compiled

    if not compiled.disabled():
        compiled.unavailable_reason()
    yield
