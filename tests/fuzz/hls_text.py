"""Text strategies for LL-HLS request targets: real object paths and directive queries (named
by `hls.names` itself), mutated with the characters that matter to a URL (`/ . % ? & = _ #`),
numbers made huge, pieces repeated."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz import seeds

URL_CHARS = "/.%?&=_#;:+ -09azAZ\x00\xff\u00e9"
ROOMS = (seeds.ROOM, "a", "x" * 64, "x" * 65, "Demo", "-x", "demo", "")


@st.composite
def text_mutant(draw: st.DrawFn, seed_texts: tuple[str, ...]) -> str:
    text = list(draw(st.sampled_from(seed_texts)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(("set", "insert", "delete", "digits", "dup")))
        pos = draw(st.integers(0, len(text)))
        if op == "set" and pos < len(text):
            text[pos] = draw(st.sampled_from(URL_CHARS))
        elif op == "insert":
            text[pos:pos] = draw(st.text(alphabet=URL_CHARS, min_size=1, max_size=4))
        elif op == "delete":
            del text[pos : pos + draw(st.integers(1, 8))]
        elif op == "digits":
            text[pos:pos] = str(draw(st.sampled_from((0, 1, 9, 2**53, 2**53 + 1, 10**16,
                                                      10**40, -1))))
        else:
            text[pos:pos] = text[pos : pos + draw(st.integers(1, 30))]
    return "".join(text)


def queries() -> st.SearchStrategy[str]:
    joined = st.lists(st.sampled_from(seeds.QUERIES), max_size=3).map("&".join)
    return st.one_of(text_mutant(seeds.QUERIES), joined, st.text(max_size=60))


def paths() -> st.SearchStrategy[str]:
    real = tuple(p for room in ROOMS for p in seeds.object_paths(room))
    return st.one_of(text_mutant(real), st.sampled_from(real), st.text(max_size=80))
