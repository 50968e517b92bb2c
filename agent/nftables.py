"""nftables through libnftables (Debian's `libnftables1`), loaded with ctypes.

The library behind `nft`: one command buffer is parsed and sent to the kernel
as one netlink batch, so a buffer of several lines is one atomic transaction.
Running it in-process costs well under a millisecond per refresh, where
spawning `nft` per keepalive would cost a fork and exec each time.

The netlink socket is opened when the context is made: a `Nft` made while the
thread is in a network namespace (setns) keeps working on that namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0


class NftError(Exception):
    """nftables refused a command buffer, or the library is missing; the message says why."""


def _load() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or LIBRARY)
    except OSError:
        raise NftError(
            f"{LIBRARY} not found; install Debian's libnftables1 (apt-get install libnftables1)"
        ) from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


class Nft:
    """One libnftables context; `run` executes a command buffer as one transaction."""

    def __init__(self) -> None:
        self._lib = _load()
        self._ctx = self._lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("libnftables could not make a context (out of memory?)")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()  # a context is not safe for concurrent use

    def run(self, commands: str) -> str:
        """Run `commands` (nft syntax, one per line) atomically; returns what nft printed."""
        with self._lock:
            if self._ctx is None:
                raise NftError("nftables context already closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            first = err.strip().splitlines()[0] if err.strip() else f"error {rc}"
            raise NftError(f"nftables refused the change: {first}")
        return out

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None
