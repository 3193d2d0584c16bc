"""Edge: a stateless LL-HLS cache in front of an origin or another edge (a shield).

    listener ─▶ protocol (httptools) ─▶ app ─▶ targets (cache key) ─▶ cache ─▶ upstream
                                                 hit: lru / pinned playlist answers at once

One upstream request per object in flight however many listeners ask; blocking requests are
answered from pinned playlists when they can be. `server.serve` runs it on uvloop.
"""
