import os

import pytest


def _xdist_controller(config) -> bool:
    """Whether this process hands tests to pytest-xdist workers rather than running them."""
    return bool(getattr(config.option, "numprocesses", None)) and "PYTEST_XDIST_WORKER" not in os.environ


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pytest_configure(config):
    """In each process that runs tests: Triton's interpreter where there is no CUDA, and under
    pytest-xdist (``-n N``) torch's intra-op threads split between the workers, so that N workers
    do not start N times the cores' threads. The xdist controller runs no test and imports no torch."""
    if _xdist_controller(config):
        return
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # the tests that set 2 or 4 threads still share the cores with the other workers: OpenMP
        # threads that wait for work sleep instead of spinning on a core another thread needs
        # (read once, when torch loads the OpenMP runtime: before the first import of torch)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    # Triton decides at decoration time whether a @triton.jit function is compiled or interpreted,
    # so the interpreter must be switched on before any test module imports the kernels (on a
    # machine without CUDA, the kernels can only run in the interpreter).
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if workers:
        torch.set_num_threads(max(1, _cores() // int(workers)))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (it renames the grouped tests' ids)
def pytest_collection_modifyitems(config, items):
    """The browser tests run on one worker (``--dist loadgroup``), which starts one chromium for all."""
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _compiled_cpu_loop_built_first():
    """Build the CPU backend's compiled loops (if this machine can) before any test, so that the
    build, about 30 s on a fresh machine, never happens inside a test's subprocess or timing. Each
    xdist worker calls this: the loader's file lock lets one build while the others wait, then
    they load the same build."""
    from gatedrnn.backends.cpu import compiled

    if not compiled.disabled():
        compiled.unavailable_reason()
    yield
