"""Batch ed25519 verification that runs outside the GIL, for nodes that verify many txs.

``crypto.verify`` calls libsodium once per signature through PyNaCl; every call releases and
retakes the GIL, so a verifying thread crawls while the event-loop thread is busy (each retake
waits for the interpreter's switch interval). ``verify_batch`` instead runs a numba loop with
``nogil=True`` that calls the very same libsodium function PyNaCl wraps
(``crypto_sign_ed25519_verify_detached`` in PyNaCl's bundled, pinned libsodium), so a whole
batch runs on another core in one GIL release and gives the same answer as ``crypto.verify``
(``tests/test_wire.py::test_batch_verify_equals_pynacl`` holds them equal). If the symbol cannot
be bound, it falls back to ``crypto.verify`` one by one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import nacl._sodium
import numba
import numpy as np

from mpsnode.consensus import crypto

_kernel = None
_fallback_reason = ""


def _build_kernel():

    lib = ctypes.CDLL(nacl._sodium.__file__)
    fn = lib.crypto_sign_ed25519_verify_detached
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong, ctypes.c_void_p]
    fn.restype = ctypes.c_int

    @numba.njit(nogil=True)
    def kernel(sigs, msgs, pks, out):
        for i in range(out.shape[0]):
            out[i] = fn(sigs[i].ctypes.data, msgs[i].ctypes.data, 32, pks[i].ctypes.data) == 0

    sample = np.zeros((1, 64), np.uint8)
    kernel(sample, sample[:, :32].copy(), sample[:, :32].copy(), np.zeros(1, np.bool_))  # compile now
    return kernel


def _get_kernel():
    global _kernel, _fallback_reason
    if _kernel is None and not _fallback_reason:
        try:
            _kernel = _build_kernel()
        except Exception as exc:  # noqa: BLE001 - any failure means: use the slow, sure path
            _fallback_reason = f"{type(exc).__name__}: {exc}"
    return _kernel


def warm_up() -> str:
    """Compile the kernel now (about 0.3 s); returns "numba" or the reason for the fallback."""
    return "numba" if _get_kernel() is not None else f"fallback ({_fallback_reason})"


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """``[crypto.verify(address, message, signature) for ...]`` over 32-byte messages, in one GIL release.

    Safe to call from a worker thread (``trio.to_thread.run_sync``); that is what it is for.
    """
    kernel = _get_kernel()
    n = len(items)
    shaped = all(
        len(a) == crypto.ADDRESS_LEN and len(m) == 32 and len(s) == crypto.SIGNATURE_LEN for a, m, s in items
    )
    if kernel is None or not shaped or n == 0:
        return [crypto.verify(a, m, s) for a, m, s in items]
    pks = np.frombuffer(b"".join(a for a, _, _ in items), dtype=np.uint8).reshape(n, 32)
    msgs = np.frombuffer(b"".join(m for _, m, _ in items), dtype=np.uint8).reshape(n, 32)
    sigs = np.frombuffer(b"".join(s for _, _, s in items), dtype=np.uint8).reshape(n, 64)
    out = np.zeros(n, dtype=np.bool_)
    kernel(sigs, msgs, pks, out)
    return out.tolist()
