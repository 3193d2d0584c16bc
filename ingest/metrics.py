"""Prometheus metrics for one ingest service (its own registry, so two can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rtmp_connections = Counter(
            "townsquare_ingest_rtmp_connections", "RTMP connections by outcome",
            ["outcome"], registry=r)
        self.rtmp_errors = Counter(
            "townsquare_ingest_rtmp_errors", "RTMP sessions ended by an error, by kind",
            ["kind"], registry=r)
        self.rtmp_publishes = Counter(
            "townsquare_ingest_rtmp_publishes", "RTMP publishes accepted", registry=r)
        self.rtmp_reads = Counter(
            "townsquare_ingest_rtmp_reads", "Reads from RTMP connections (each a wake-up of "
            "the event loop; about one per audio message while publishing)", registry=r)
        self.whip_sessions = Counter(
            "townsquare_ingest_whip_sessions", "WHIP offers by outcome", ["outcome"], registry=r)
        self.whip_idle_closed = Counter(
            "townsquare_ingest_whip_idle_closed", "WHIP sessions closed because their audio "
            "stopped (the browser went away without a goodbye)", registry=r)
        self.publish_refused = Counter(
            "townsquare_ingest_publish_refused", "Publishes refused, by reason",
            ["protocol", "reason"], registry=r)
        self.decode_errors = Counter(
            "townsquare_ingest_decode_errors", "Audio packets a decoder rejected", registry=r)
        self.rooms_created = Counter(
            "townsquare_ingest_rooms_created", "Rooms created", registry=r)
        self.rooms_ended = Counter(
            "townsquare_ingest_rooms_ended", "Rooms ended, by reason", ["reason"], registry=r)
        self.rooms_live = Gauge(
            "townsquare_ingest_rooms_live", "Rooms with a running broadcast", registry=r)
        self.speakers = Gauge(
            "townsquare_ingest_speakers", "Speakers connected, all rooms", registry=r)
        self.program_seconds = Counter(
            "townsquare_ingest_program_seconds", "Program audio fed to broadcasts", registry=r)
        self.jitter_underruns = Counter(
            "townsquare_ingest_jitter_underruns", "Speaker buffers that ran dry", registry=r)
        self.jitter_dropped = Counter(
            "townsquare_ingest_jitter_dropped_samples",
            "Samples speaker buffers dropped (late audio, or over their bound)", registry=r)
        self.jitter_admitted_early = Counter(
            "townsquare_ingest_jitter_admitted_early",
            "Speaker audio admitted before the program reached it: more arrivals waited than "
            "the bound (the program clock was held up)", registry=r)
        self.jitter_corrected = Counter(
            "townsquare_ingest_jitter_corrected_blocks",
            "Blocks stretched or squeezed to follow a speaker's clock drift", registry=r)
        self.late_blocks = Counter(
            "townsquare_ingest_program_late_blocks",
            "Program blocks rendered late to catch up after the loop was held up", registry=r)
        self.program_restarts = Counter(
            "townsquare_ingest_program_restarts",
            "Rooms put back on air in a new epoch here after their program stopped on its own "
            "(the broadcast refused audio: its encoder or publishing failed), by outcome "
            "(on_air; elsewhere: another node holds it now; stopped: it ended meanwhile; failed: tried "
            "again)", ["outcome"], registry=r)
        self.limited_blocks = Counter(
            "townsquare_ingest_limited_blocks", "20 ms program blocks the limiter reduced",
            registry=r)
        self.limit_hits = Counter(
            "townsquare_ingest_limit_hits",
            "Connections closed or requests refused by an ingest limit, by limit", ["limit"],
            registry=r)
        self.rtmp_open = Gauge(
            "townsquare_ingest_rtmp_open_connections", "RTMP connections open, by transport",
            ["transport"], registry=r)
        self.rate_keys = Gauge(
            "townsquare_ingest_rate_limiter_keys",
            "Addresses and tokens the control API's rate limiter tracks (bounded)", registry=r)
        self.http_requests = Counter(
            "townsquare_ingest_http_requests", "Control API requests by status class",
            ["status"], registry=r)

        # Cluster mode (a node holding rooms by lease).
        self.leases_held = Gauge(
            "townsquare_ingest_leases_held", "Rooms this node holds a live lease for",
            registry=r)
        self.lease_losses = Counter(
            "townsquare_ingest_lease_losses",
            "Rooms stopped here because their lease was lost, by reason (taken: another node "
            "holds it; fence: not renewed in time; lapsed: taken here, and ran out before the "
            "room was on air)", ["reason"], registry=r)
        self.lease_renewal_failures = Counter(
            "townsquare_ingest_lease_renewal_failures",
            "Lease renewals that failed, by kind (unavailable, timeout, error)", ["kind"],
            registry=r)
        self.lease_renewal_seconds = Gauge(
            "townsquare_ingest_lease_renewal_seconds",
            "How long the last lease renewal that succeeded took", registry=r)
        self.rooms_adopted = Counter(
            "townsquare_ingest_rooms_adopted",
            "Rooms this node took over from a node that went away", registry=r)
        self.adoption_seconds = Histogram(
            "townsquare_ingest_adoption_seconds",
            "From the look that found a room nobody holds to that room on air here: the "
            "lease, the store's reads of where the room stands, the broadcast's start (what "
            "listeners wait on this node after a failover or a hand-over)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
