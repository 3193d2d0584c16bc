"""WHIP (RFC 9725): browsers and WebRTC encoders publish audio with one HTTP POST.

    POST /whip/{room}   Authorization: Bearer {stream key}, body: SDP offer
        → 201 Created, Location: /whip/{room}/{session}, body: SDP answer
    DELETE /whip/{room}/{session}  → the session ends, the speaker leaves

Each session is one aiortc RTCPeerConnection, answered without trickle ICE (all host
candidates are in the answer; PATCH gets 405). Audio is taken (Opus preferred; aiortc also
decodes G.722, PCMU and PCMA), any video m-line is answered `inactive` so nobody spends
CPU on pictures. Decoded frames go through the same resampler and jitter buffer as RTMP.

Loopback: aioice leaves 127.0.0.1 out of its host candidates. A browser on this very
machine — and in an isolated network namespace only loopback exists — then has nothing to
reach, so `allow_loopback_candidates()` adds it back (setting `whip_ice_loopback`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from ingest.decoder import ProgramResampler
from ingest.errors import DecodeError, OverLimit, SdpError, UnsupportedCodec
from ingest.metrics import IngestMetrics
from ingest.rooms import Room, Rooms, Speaker

log = logging.getLogger("townsquare.ingest.whip")

State = Literal["new", "connecting", "connected", "closed"]
MAX_SDP_BYTES = 65_536
_original_host_addresses = aioice.ice.get_host_addresses


def allow_loopback_candidates(enabled: bool = True) -> None:
    """Make aioice offer 127.0.0.1 as a host candidate (it skips loopback by default)."""

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = list(_original_host_addresses(use_ipv4, use_ipv6))
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    aioice.ice.get_host_addresses = with_loopback if enabled else _original_host_addresses


def check_offer(body: bytes) -> str:
    """The offer as text once it is plausibly an SDP offer with audio; SdpError if not."""
    if len(body) > MAX_SDP_BYTES:
        raise SdpError(f"SDP offer over {MAX_SDP_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SdpError("SDP offer is not UTF-8") from exc
    if not text.startswith("v=0"):
        raise SdpError("SDP offer must start with v=0")
    try:
        parsed = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise SdpError(f"SDP offer does not parse: {type(exc).__name__}: {exc}") from exc
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        raise UnsupportedCodec("SDP offer has no audio m-line")
    for m in audio:  # session-level ICE and DTLS attributes are copied into each media
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise SdpError("SDP offer has no ICE credentials (a=ice-ufrag/a=ice-pwd)")
        if m.dtls is None or not m.dtls.fingerprints:
            raise SdpError("SDP offer has no DTLS fingerprint")
    return text


class WhipSession:
    """One WebRTC publisher: a peer connection, a speaker and the task that pumps audio."""

    def __init__(self, session_id: str, room: Room, rooms: Rooms, metrics: IngestMetrics,
                 remote: str, ice_servers: list[str], connect_timeout: float,
                 on_closed: Callable[[WhipSession], None], name: str | None = None,
                 idle_timeout: float = 5.0) -> None:
        self.id = session_id
        self.room = room
        self.remote = remote
        self.name = name  # the speaker's display name, None for the default
        self.state: State = "new"
        self._rooms, self._metrics = rooms, metrics
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._last_audio = 0.0  # monotonic time of the last frame received
        self._on_closed = on_closed
        config = RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in ice_servers])
        self.pc = RTCPeerConnection(config)
        self.speaker: Speaker | None = None
        self.answer_sdp = ""
        self._tasks: set[asyncio.Task[None]] = set()

    def _set_state(self, state: State) -> None:
        if state != self.state:
            log.info("whip %s (%s): %s → %s", self.id, self.room.name, self.state, state)
            self.state = state

    async def answer(self, offer: str) -> str:
        pc = self.pc

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._pump(track))

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState == "connected":
                if self.state != "connected":
                    self._last_audio = time.monotonic()
                    self._spawn(self._idle_watch())
                self._set_state("connected")
            elif pc.connectionState in ("failed", "closed"):
                await self.close(f"peer connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for t in pc.getTransceivers():
                if t.kind == "audio":
                    t.direction = "recvonly"
                    _prefer_opus(t)
                else:
                    t.direction = "inactive"
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc reports a bad offer with many exception types
            raise SdpError(f"cannot answer the offer: {type(exc).__name__}: {exc}") from exc
        self.speaker = await self._rooms.speak(self.room, "whip", self.remote, self._disconnect,
                                               self.name)
        self._set_state("connecting")
        self._spawn(self._connect_deadline())
        self.answer_sdp = str(pc.localDescription.sdp)
        return self.answer_sdp

    async def close(self, reason: str = "closed") -> None:
        if self.state == "closed":
            return
        self._set_state("closed")
        log.info("whip %s (%s) closed: %s", self.id, self.room.name, reason)
        if self.speaker is not None:
            self._rooms.leave(self.room, self.speaker)
            self.speaker = None
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            await asyncio.wait_for(self.pc.close(), 5.0)
        except Exception as exc:  # noqa: BLE001 - closing must finish whatever aiortc raises
            log.debug("whip %s: closing the peer connection: %s", self.id, exc)
        self._on_closed(self)

    async def _disconnect(self) -> None:
        await self.close("removed from the room")

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self.state != "connected":
            await self.close(f"not connected within {self._connect_timeout:g} s")

    async def _idle_watch(self) -> None:
        """Close a connected session whose audio has stopped for `idle_timeout`: a browser
        sends audio every 20 ms while it is there, muted or not."""
        while self.state == "connected":
            left = self._last_audio + self._idle_timeout - time.monotonic()
            if left <= 0:
                self._metrics.whip_idle_closed.inc()
                await self.close(f"no audio for {self._idle_timeout:g} s")
                return
            await asyncio.sleep(left)

    async def _pump(self, track: MediaStreamTrack) -> None:
        resampler = ProgramResampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                await self.close("the browser stopped sending")
                return
            self._last_audio = time.monotonic()
            speaker = self.speaker
            if speaker is None:
                return
            try:
                speaker.push(resampler.convert(frame))  # type: ignore[arg-type]
            except DecodeError as exc:
                self._metrics.decode_errors.inc()
                log.debug("whip %s: %s", self.id, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class WhipEndpoint:
    """Every WHIP session of this service."""

    def __init__(self, rooms: Rooms, metrics: IngestMetrics, ice_servers: list[str] | None = None,
                 connect_timeout: float = 20.0, max_sessions: int = 200,
                 max_per_address: int = 16, idle_timeout: float = 5.0) -> None:
        self._rooms, self._metrics = rooms, metrics
        self._ice_servers = ice_servers or []
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.max_per_address = max_per_address
        self.sessions: dict[str, WhipSession] = {}

    async def offer(self, room: Room, offer_body: bytes, remote: str,
                    name: str | None = None) -> WhipSession:
        """Answer an offer; raises SdpError, UnsupportedCodec, OverLimit or a RoomError.
        `name`: the speaker's display name (checked by `ingest.display`)."""
        offer = check_offer(offer_body)
        if len(self.sessions) >= self.max_sessions:
            self._metrics.limit_hits.labels(limit="whip_sessions").inc()
            raise OverLimit(f"{self.max_sessions} WHIP sessions already; try again later",
                            "whip_sessions", retry_after=5.0)
        address = _address(remote)
        # At most a few hundred sessions: counting them is cheaper than keeping a tally.
        if sum(_address(s.remote) == address for s in self.sessions.values()) \
                >= self.max_per_address:
            self._metrics.limit_hits.labels(limit="whip_sessions_per_address").inc()
            raise OverLimit(f"{address} has {self.max_per_address} WHIP sessions already",
                            "whip_sessions_per_address", retry_after=5.0)
        sid = secrets.token_urlsafe(16)
        session = WhipSession(sid, room, self._rooms, self._metrics, remote, self._ice_servers,
                              self._connect_timeout, self._forget, name, self._idle_timeout)
        self.sessions[sid] = session
        try:
            await session.answer(offer)
        except BaseException:
            await session.close("offer refused")
            raise
        return session

    def get(self, room: str, session_id: str) -> WhipSession | None:
        session = self.sessions.get(session_id)
        if session is None or session.room.name != room:
            return None
        return session

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("service stopped")

    def _forget(self, session: WhipSession) -> None:
        self.sessions.pop(session.id, None)


def _address(remote: str) -> str:
    """The host part of "host:port" (IPv6 hosts keep their colons)."""
    return remote.rpartition(":")[0] or remote


def _prefer_opus(transceiver: Any) -> None:
    from aiortc.rtcrtpsender import RTCRtpSender

    caps = RTCRtpSender.getCapabilities("audio").codecs
    opus = [c for c in caps if c.mimeType.lower() == "audio/opus"]
    others = [c for c in caps if c.mimeType.lower() != "audio/opus"]
    transceiver.setCodecPreferences(opus + others)
