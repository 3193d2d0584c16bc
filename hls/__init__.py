"""The LL-HLS rules that every service must agree on, as pure values and functions.

    names       the room-name rule and the grammar of object names (parts, segments, playlists)
    directives  `_HLS_msn` / `_HLS_part` / `_HLS_skip`: parsing, errors, canonical form
    reach       how far a media playlist reaches; which blocking requests it satisfies
    http        content types, CORS headers and cache lifetimes (LLHLS.md Appendix B)
    audience    the listener-count reports edges send upstream: headers, bounds, a report table

The packager names objects with it, the origin and the edge parse requests with it. Nothing
here does I/O, and nothing here imports another townsquare package.
"""
