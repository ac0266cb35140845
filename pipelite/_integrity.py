"""How much of a stored file is checked when it is loaded, and the full scrub of a store.

Levels (``Pipeline(verify=...)``):

- ``"always"``: every load hashes the whole file (O(size)).
- ``"sampled"`` (the default): files up to 2 MiB are hashed whole; larger ones are checked by
  size and by a digest of 64 blocks of 4 KiB (the first, the last, and 62 spread evenly between)
  taken when the file was written: O(1), about 0.3 ms. It catches truncation, extension, a
  damaged header or tail and damage that covers any sampled block (a zeroed or torn range
  longer than the spacing between blocks); it does not catch a few bytes flipped between two
  sampled blocks: that is what ``"always"`` and ``pipelite verify`` are for.
- ``"never"``: size only.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import xxhash

from .errors import CorruptArtifactError
from .formats import hash_file

__all__ = ["LEVELS", "BLOCK", "BLOCKS", "CHEAP_VERIFY_BYTES", "sample_digest", "check_level",
           "check_content"]

LEVELS = ("always", "sampled", "never")
CHEAP_VERIFY_BYTES = 2 << 20  # files up to this size are hashed on every load (~0.3 ms)
BLOCK = 4096
BLOCKS = 64


def check_level(level: Any) -> str:
    """``level`` if it is a verify level, else an ``InvalidArgumentError`` that lists them."""
    if level not in LEVELS:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"verify={level!r} is not a verify level: use one of "
                                   f"{', '.join(repr(v) for v in LEVELS)}")
    return level


@functools.lru_cache(maxsize=256)
def _offsets(size: int) -> tuple[int, ...]:
    last = max(0, size - BLOCK)
    return tuple(sorted({(i * last) // (BLOCKS - 1) for i in range(BLOCKS)}))


def sample_digest(path: str, size: int) -> str:
    """A digest of the file's size and of 64 blocks at offsets that depend only on its size."""
    h = xxhash.xxh3_64()
    h.update(b"%d;" % size)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        for offset in _offsets(size):
            h.update(os.pread(fd, BLOCK, offset))
    finally:
        os.close(fd)
    return h.hexdigest()


def check_content(path: str, digest: str, size: int, sample: str | None, level: str) -> None:
    """Raise ``CorruptArtifactError`` if the local file at ``path`` does not hold the content
    of hash ``digest`` (``size`` bytes, ``sample`` its sampled blocks' digest, if recorded),
    checked at ``level``."""
    if level == "never":
        return
    if level == "always" or size <= CHEAP_VERIFY_BYTES:
        if hash_file(path) != digest:
            raise CorruptArtifactError(path, "its content hash does not match")
    elif sample is not None and sample_digest(path, size) != sample:
        raise CorruptArtifactError(path, "its sampled blocks do not match")
