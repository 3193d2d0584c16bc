"""Live playlist histories for tests: every state a rendition's playlist goes through, part
by part, as the packager's builder makes them."""

from __future__ import annotations

from packager.playlist import MediaPlaylist, Part, PlaylistBuilder, resume_window

T0 = 1_795_700_000.0
PART = 0.21333  # 10 AAC frames
PARTS = 9  # a 1.92 s segment: TARGETDURATION 2, CAN-SKIP-UNTIL 12 s


def live_history(segments: int, epochs_at: frozenset[int], window: int,
                 began: float = T0) -> list[MediaPlaylist]:
    """Every state of a live rendition, part by part, over `segments` segments, with a new
    epoch (a discontinuity and another init section) starting at each msn in `epochs_at`."""
    epoch = 1
    b = PlaylistBuilder(MediaPlaylist(2, PART, "e1/init.mp4", preload_hint="e1/p1.0.m4s"),
                        window=window)
    states = []
    t = began
    for msn in range(1, segments + 1):
        if msn in epochs_at:
            epoch += 1
            base = MediaPlaylist(2, PART, f"e{epoch}/init.mp4")
            b.playlist = resume_window(b.playlist, msn, f"e{epoch}/init.mp4", base)
            t += 3.0  # the gap of a restart
        for i in range(PARTS):
            hint = f"e{epoch}/p{msn}.{i + 1}.m4s" if i + 1 < PARTS else f"e{epoch}/p{msn + 1}.0.m4s"
            states.append(b.add_part(Part(PART, f"e{epoch}/p{msn}.{i}.m4s"), t, hint))
            t += PART
        states.append(b.close_segment(f"e{epoch}/s{msn}.m4s", f"e{epoch}/p{msn + 1}.0.m4s"))
    return states
