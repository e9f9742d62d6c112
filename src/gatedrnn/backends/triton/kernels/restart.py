"""Restarts inside a call (the layer's ``reset``) in the kernels.

A (T, B) mask of bytes, ``restart[t, b]`` nonzero where sequence b starts again from the zero state
before step t (already in the order the kernel walks: see :func:`gatedrnn.backends.reset_in_walk_order`).
A kernel takes it behind the constexpr ``RESTART``: without it, every helper here returns its input,
so the kernels compile to the code they had before restarts existed.

Forward, the state before step t is read through a row mask that leaves out the restarted rows
(:func:`carried_rows`, :func:`carried_mask`): masked loads give zeros, a select and not a product, so
an infinite or NaN state is replaced too, while the buffers keep the real h_{t-1} (it is step t-1's
output). Backward, nothing flows back through a restart: the gradients the step carries to the state
before it are zeroed on the restarted rows (:func:`carried_only`), and the next step's gather of its
pre-activation gradients leaves those rows out (its row mask from :func:`carried_rows` at t + 1).
"""

import triton
import triton.language as tl


@triton.jit
def carried_rows(restart_ptr, t, offs_b, mb, B, RESTART: tl.constexpr):
    """(BB,) bool: the rows of ``mb`` whose state before step t carries over into it; with ``RESTART``
    those not restarted at t."""
    if RESTART:
        return mb & (tl.load(restart_ptr + tl.cast(t, tl.int64) * B + offs_b, mask=mb, other=0) == 0)
    else:
        return mb


@triton.jit
def carried_mask(mask, keep, RESTART: tl.constexpr):
    """A (BB, BW) load mask of the state before a step: ``mask`` less the rows not in ``keep``
    (:func:`carried_rows`) with ``RESTART``, else ``mask``."""
    if RESTART:
        return mask & keep[:, None]
    else:
        return mask


@triton.jit
def carried_only(v, keep, RESTART: tl.constexpr):
    """``v`` (BB, BW), a gradient for the state before a step, zero on the rows not in ``keep``
    with ``RESTART`` (a select); else ``v``."""
    if RESTART:
        return tl.where(keep[:, None], v, tl.zeros(v.shape, v.dtype))
    else:
        return v
