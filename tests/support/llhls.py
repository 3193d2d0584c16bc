"""Checks of the LL-HLS rules in shared/LLHLS.md, applied to real playlists.

Structure is parsed with the `m3u8` library; tag order (MAP and PROGRAM-DATE-TIME before a
segment's first part, the hint at the end) is checked by walking the lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import m3u8

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def attrs(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _ATTR.findall(line.split(":", 1)[1])}


@dataclass
class Position:
    last_msn: int
    last_part: int
    hint: str | None


def _in(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def check_media_playlist(text: str, renditions: int = 3) -> Position:
    """Assert every rule a single media playlist can be checked for; return where it ends."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0] == "#EXTM3U"
    pl = m3u8.loads(text)
    ended = pl.is_endlist
    tags = {ln.split(":", 1)[0] for ln in lines}
    version = int(next(ln for ln in lines if ln.startswith("#EXT-X-VERSION:")).split(":")[1])
    assert version >= 6, "EXT-X-MAP needs version 6"

    td = int(next(ln for ln in lines if ln.startswith("#EXT-X-TARGETDURATION:")).split(":")[1])
    msn0 = int(next(ln for ln in lines if ln.startswith("#EXT-X-MEDIA-SEQUENCE:")).split(":")[1])
    assert msn0 >= 1, "media sequence starts at 1 or more"

    sc = attrs(next(ln for ln in lines if ln.startswith("#EXT-X-SERVER-CONTROL:")))
    pinf = attrs(next(ln for ln in lines if ln.startswith("#EXT-X-PART-INF:")))
    part_target = float(pinf["PART-TARGET"])
    assert sc["CAN-BLOCK-RELOAD"] == "YES"
    assert float(sc["PART-HOLD-BACK"]) >= 3 * part_target - 1e-9
    if "CAN-SKIP-UNTIL" in sc:
        assert float(sc["CAN-SKIP-UNTIL"]) >= 6 * td
        assert version >= 9, "EXT-X-SKIP needs version 9"

    # Walk the lines: MAP first, PDT before each segment's first part, parts ≤ target.
    seen_map = False
    folder = ""
    pdt_pending = False
    seg_parts: list[float] = []
    independents: set[bool] = set()
    seg_durations: list[float] = []
    msn = msn0
    skipped = 0
    last_msn, last_part = -1, -1
    hint: str | None = None
    for ln in lines:
        tag = ln.split(":", 1)[0]
        if tag == "#EXT-X-MAP":
            seen_map = True
            # Media sits beside its init segment: one folder per epoch.
            folder = attrs(ln)["URI"].rpartition("/")[0]
        elif tag == "#EXT-X-SKIP":
            skipped = int(attrs(ln)["SKIPPED-SEGMENTS"])
            msn += skipped
        elif tag == "#EXT-X-PROGRAM-DATE-TIME":
            assert re.fullmatch(r"#EXT-X-PROGRAM-DATE-TIME:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)", ln), ln
            pdt_pending = True
        elif tag == "#EXT-X-PART":
            assert seen_map, "EXT-X-MAP must come before the first part"
            if not seg_parts:
                assert pdt_pending, "PROGRAM-DATE-TIME must come before a segment's first part"
            a = attrs(ln)
            d = float(a["DURATION"])
            assert d <= part_target + 1e-9, f"part {a['URI']} longer than PART-TARGET"
            seg_parts.append(d)
            # Start points only where a segment starts (packager.playlist says why).
            if seg_parts[1:]:
                assert "INDEPENDENT" not in a, f"{a['URI']}: INDEPENDENT=YES past a segment's first part"
            else:
                independents.add(a.get("INDEPENDENT") == "YES")
            last_msn, last_part = msn, len(seg_parts) - 1
            assert a["URI"] == _in(folder, f"p{msn}.{len(seg_parts) - 1}.m4s"), (a["URI"], msn)
        elif tag == "#EXTINF":
            assert seen_map
            assert pdt_pending, "every segment carries PROGRAM-DATE-TIME"
            d = float(ln.split(":", 1)[1].rstrip(","))
            assert round(d) <= td, "segment longer than the target duration"
            seg_durations.append(d)
            if seg_parts:
                assert abs(sum(seg_parts) - d) < 1e-3, "a segment's parts hold exactly its samples"
                for p in seg_parts[:-1]:
                    assert p >= 0.85 * part_target - 1e-9, "parts are ≥ 85 % of PART-TARGET"
                last_msn, last_part = msn, len(seg_parts) - 1
        elif not ln.startswith("#"):
            assert ln == _in(folder, f"s{msn}.m4s"), (ln, msn)
            msn += 1
            seg_parts = []
            pdt_pending = False
        elif tag == "#EXT-X-PRELOAD-HINT":
            a = attrs(ln)
            assert a["TYPE"] == "PART"
            hint = a["URI"]
    assert len(independents) <= 1, "INDEPENDENT=YES on every segment's first part or on none"
    for p in seg_parts[:-1]:
        assert p >= 0.85 * part_target - 1e-9
    if ended:
        assert "#EXT-X-PRELOAD-HINT" not in tags, "no preload hint after ENDLIST"
    else:
        assert hint is not None, "a live playlist names the next part"
        expected = {_in(folder, f"p{last_msn}.{last_part + 1}.m4s"),
                    _in(folder, f"p{last_msn + 1}.0.m4s")}
        assert hint in expected, (hint, expected)
        reports = [attrs(ln) for ln in lines if ln.startswith("#EXT-X-RENDITION-REPORT:")]
        assert len(reports) == renditions - 1, "a report for every other rendition"
        for r in reports:
            assert abs(int(r["LAST-MSN"]) - last_msn) <= 1, "renditions advance in step"
    assert len(pl.segments) >= 0
    return Position(last_msn, last_part, hint)


def check_multivariant(text: str) -> list[str]:
    """Every variant has BANDWIDTH and CODECS; there is an AAC one. Returns the URIs."""
    pl = m3u8.loads(text)
    assert pl.is_variant
    codecs = [p.stream_info.codecs for p in pl.playlists]
    assert all(codecs), "CODECS on every variant"
    assert all(p.stream_info.bandwidth for p in pl.playlists)
    assert any(c.startswith("mp4a.40") for c in codecs), "always an AAC variant"
    return [p.uri for p in pl.playlists]
