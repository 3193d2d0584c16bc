"""A key revoked through one node of a cluster disconnects the speaker another node holds:
two real nodes sharing one rooms database, ffmpeg publishing to the second."""

from __future__ import annotations

import secrets
from contextlib import ExitStack
from pathlib import Path

from tests.ingest.support import ffmpeg_publish
from tests.private.support import node, wait_until
from tests.private.test_keys import _gone, _speakers


def test_revoking_through_node_a_disconnects_a_speaker_on_node_b(tmp_path: Path) -> None:
    token = "test-admin-" + secrets.token_hex(12)  # nodes authenticate to each other with it
    shared = {"TOWNSQUARE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'rooms.db'}",
              "TOWNSQUARE_LEASE_SECONDS": "3"}
    with ExitStack() as stack:
        a = stack.enter_context(node(tmp_path, "node-a", {**shared, "TOWNSQUARE_NODE_ID": "a"},
                                     token))
        b = stack.enter_context(node(tmp_path, "node-b", {**shared, "TOWNSQUARE_NODE_ID": "b"},
                                     token))
        key = a.create_room("split")["stream_key"]
        speaker = ffmpeg_publish(b.rtmp_url(key), 440, seconds=30, log=tmp_path / "ffmpeg.log")
        try:
            wait_until(lambda: _speakers(b, "split"), 15, "the speaker joining on node b")
            assert b.room("split")["node"] == "b"
            with a.api() as c:
                r = c.delete("/rooms/split/key")
            assert r.status_code == 200, r.text
            assert r.json()["nodes_told"] == {"b": "ok"}
            assert _gone(speaker) not in (0, None), "node b kept the revoked key's speaker"
        finally:
            _gone(speaker, 0)
        assert _speakers(b, "split") == []
        # Node b refuses the revoked key from then on, whatever it held in memory.
        again = ffmpeg_publish(b.rtmp_url(key), 440, seconds=30, log=tmp_path / "again.log")
        assert _gone(again, 15) not in (0, None)
