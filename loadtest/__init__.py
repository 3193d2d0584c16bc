"""A load generator for townsquare's listener side: simulated LL-HLS listeners.

`townsquare loadtest` drives N listeners that ask what hls.js asks in low-latency mode (a
blocking playlist reload per part with delta updates, the preload-hinted part in parallel),
spread over the renditions, from several processes, and reports what they received: requests
per second, errors by kind, part delivery delay and time to first part, beside the client's
own CPU and a small canary group that runs in a process of its own. When the main group's
delays grow while the canary's stay low, the client is saturated, not the server.

    http.py      one keep-alive HTTP/1.1 connection on a raw asyncio protocol (httptools)
    playlist.py  what a listener reads from a live playlist: part times and the next hint
    stats.py     mergeable counters and latency histograms
    listener.py  one simulated listener
    run.py       worker processes, the canary, the live display and the JSON summary
"""
