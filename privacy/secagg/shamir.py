"""Shamir secret sharing over the prime field GF(p), p = 2^256 + 297, batched.

Shamir's scheme is information-theoretic: t shares determine the secret by Lagrange
interpolation, and any t - 1 shares are uniformly distributed whatever the secret, so there is
no cipher here to get wrong, only field arithmetic. The field is one prime just above 2^256,
so every secret of the protocol (a 16-byte self-mask seed, a 32-byte X25519 private key) is a
single field element and a share is one element, serialised as 33 big-endian bytes.

Speed comes from doing the work once: a client splits both of its secrets in one pass over
the holders' x-coordinates, and the server computes the Lagrange coefficients for a set of
x-coordinates once (cached) and reuses them for every owner whose shares came from the same
holder positions. Coefficients come from `secrets.randbelow` (the OS CSPRNG) unless a test
passes its own deterministic source.
"""

from __future__ import annotations

import secrets as _secrets
from collections.abc import Callable, Sequence
from functools import lru_cache

PRIME = 2**256 + 297  # smallest prime above 2^256 (checked in tests with Miller-Rabin)
SHARE_BYTES = 33  # ceil(log2(PRIME) / 8)
MAX_SECRET_BYTES = 32

RandBelow = Callable[[int], int]


class ShamirError(ValueError):
    """Shares are malformed or inconsistent (callers map it to a protocol event)."""


def split(
    secrets: Sequence[bytes],
    threshold: int,
    count: int,
    randbelow: RandBelow = _secrets.randbelow,
) -> list[list[bytes]]:
    """Share every secret among holders x = 1..count; `out[i][j]` is holder i+1's share of
    secret j. Any `threshold` holders reconstruct, fewer learn nothing."""
    if not 1 <= threshold <= count < PRIME:
        raise ShamirError(f"threshold={threshold}, count={count}: need 1 <= threshold <= count")
    polys = []
    for s in secrets:
        if len(s) > MAX_SECRET_BYTES:
            raise ShamirError(f"secret of {len(s)} bytes exceeds {MAX_SECRET_BYTES}")
        # Highest coefficient first, the secret last: ready for Horner's rule.
        polys.append([randbelow(PRIME) for _ in range(threshold - 1)] + [int.from_bytes(s)])
    out: list[list[bytes]] = []
    for x in range(1, count + 1):
        row = []
        for coeffs in polys:
            acc = 0
            for c in coeffs:
                acc = (acc * x + c) % PRIME
            row.append(acc.to_bytes(SHARE_BYTES))
        out.append(row)
    return out


@lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_j with f(0) = sum_j l_j f(x_j) for any polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ShamirError("share indices must be distinct and in 1..p-1")
    nums, dens = [], []
    for j, xj in enumerate(xs):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        nums.append(num)
        dens.append(den)
    return tuple(n * pow(d, -1, PRIME) % PRIME for n, d in zip(nums, dens, strict=True))


def combine(shares: Sequence[tuple[int, bytes]], width: int) -> bytes:
    """Secret of `width` bytes from (x, share) pairs; pass exactly `threshold` of them.

    A result that does not fit `width` bytes proves a share was wrong (ShamirError); a wrong
    share that still fits is caught by the caller's commitment or public-key check.
    """
    xs = tuple(x for x, _ in shares)
    total = 0
    for coeff, (_, share) in zip(lagrange_at_zero(xs), shares, strict=True):
        if len(share) != SHARE_BYTES:
            raise ShamirError(f"a share must be {SHARE_BYTES} bytes, got {len(share)}")
        y = int.from_bytes(share)
        if y >= PRIME:
            raise ShamirError("share is not a field element")
        total += coeff * y
    value = total % PRIME
    if value >> (8 * width):
        raise ShamirError(f"shares reconstruct a value wider than {width} bytes")
    return value.to_bytes(width)
