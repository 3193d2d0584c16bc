"""Hypothesis strategies that mutate real inputs: byte edits, splices, and field-aware edits.

Random bytes stop at the first check of any parser. Edits of a real input (flip, insert,
delete, truncate, duplicate, write an interesting integer) keep most of its structure, so
a mutant of a publish session still handshakes and connects before it breaks something.
Hypothesis shrinks a failing mutant to the fewest, smallest edits.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

# Integers that sit on the edges of length and count fields (8-, 16-, 24- and 32-bit).
INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff",
               b"\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
               b"\x00\x01\x00\x00", b"\x0a", b"\x09", b"\x03", b"\x08")


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], keep: int = 0, max_edits: int = 8) -> bytes:
    """One of `seeds` with up to `max_edits` edits, its first `keep` bytes left alone."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_edits))):
        if len(data) <= keep:
            data += draw(st.binary(min_size=1, max_size=64))
            continue
        pos = draw(st.integers(keep, len(data) - 1))
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "duplicate",
                                   "splice", "interesting")))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate":
            n = draw(st.integers(1, 512))
            data[pos:pos] = data[pos : pos + n] * draw(st.integers(1, 4))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            start = draw(st.integers(0, max(0, len(other) - 1)))
            data[pos:] = other[start:]
        else:
            value = draw(st.sampled_from(INTERESTING))
            data[pos : pos + len(value)] = value
    return bytes(data)


def bytes_or_mutant(seeds: Sequence[bytes], keep: int = 0, max_size: int = 4096
                    ) -> st.SearchStrategy[bytes]:
    """Mostly mutants of real input, sometimes plain random bytes."""
    return st.one_of(mutated(seeds, keep), mutated(seeds, keep), mutated(seeds, keep),
                     st.binary(max_size=max_size))


@st.composite
def split(draw: st.DrawFn, data: bytes, max_pieces: int = 8) -> list[bytes]:
    """`data` cut into pieces at drawn points (how a socket may deliver it)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_pieces - 1)))
    pieces, last = [], 0
    for c in cuts:
        pieces.append(data[last:c])
        last = c
    pieces.append(data[last:])
    return pieces
