"""One RTMP publisher connection as an explicit state machine.

    handshake ──C0 C1 C2──▶ connecting ──connect(app=live)──▶ connected
        ──createStream/publish(key)──▶ publishing ──FCUnpublish/deleteStream/EOF──▶ closed

Every failure path ends in `closed` after telling the client why where RTMP has a way to
say it: `_error` with NetConnection.Connect.Rejected for a wrong application,
`onStatus` NetStream.Publish.BadName for a wrong key, NetStream.Publish.Rejected for a
full or ended room, NetStream.Publish.Failed for audio we cannot decode.

What an unauthenticated client may cost is bounded (`ingest.limits.RtmpLimits`): the whole
handshake has a deadline, so has the way from its end to an accepted `publish` (bytes do
not extend it, so a client trickling one byte a second is closed on time), and until the
key is accepted the connection may send at most `preauth_bytes`, in small chunk streams.

While publishing, the socket's receive low-water mark (`SO_RCVLOWAT`) keeps a chunk header
that arrives by itself from waking the event loop: ffmpeg writes each audio message's
header and payload separately, and every message used to cost two wake-ups and two trips
through the read path, the first for a header with nothing to do. With the mark, a read
takes the header and its payload together; each wake-up costs more than the work in it
(`docs/performance.md`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Literal

import numpy as np

from ingest.decoder import AacDecoder
from ingest.display import name_in_query
from ingest.errors import (
    BadKey,
    DecodeError,
    LimitExceeded,
    ProtocolError,
    RoomElsewhere,
    RoomEnded,
    RoomFull,
    Unavailable,
    UnsupportedCodec,
)
from ingest.limits import RtmpLimits
from ingest.metrics import IngestMetrics
from ingest.rooms import Room, Rooms, Speaker
from ingest.rtmp import handshake
from ingest.rtmp.amf0 import UNDEFINED
from ingest.rtmp.chunk import (
    AUDIO,
    COMMAND_AMF0,
    COMMAND_AMF3,
    DATA_AMF0,
    MAX_CHUNK_HEADER,
    USER_CONTROL,
    WINDOW_ACK_SIZE,
    ChunkDecoder,
    Message,
    encode_message,
)
from ingest.rtmp.flv import AudioSpecificConfig, AudioTag
from ingest.rtmp.messages import (
    Command,
    acknowledgement,
    on_status,
    set_chunk_size,
    set_peer_bandwidth,
    status,
    stream_begin,
    window_ack_size,
)

log = logging.getLogger("townsquare.ingest.rtmp")

State = Literal["handshake", "connecting", "connected", "publishing", "closed"]
APP = "live"
OUT_CHUNK_SIZE = 4096
WINDOW = 2_500_000
# After telling a client why it is refused, keep the socket open this long (reading and
# discarding): a publisher mid-stream reads the status only between its own writes, and
# an immediate close turns the reason into "Broken pipe".
LINGER_SECONDS = 1.0
# A publisher whose audio keeps failing to decode is sending something we cannot use.
MAX_CONSECUTIVE_DECODE_ERRORS = 50
# While publishing, wake for no less than a whole chunk header and a byte after it. Less
# waits for the next audio message (21 ms with AAC); an end of stream wakes regardless.
PUBLISHING_LOW_WATER = MAX_CHUNK_HEADER + 1


class SessionClosed(Exception):
    """Raised inside the session to stop it after the client has been told why."""


class DeadlinePassed(Exception):
    """The handshake, the way to `publish`, or a publisher's silence took too long."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class RtmpSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rooms: Rooms,
        metrics: IngestMetrics,
        limits: RtmpLimits | None = None,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._rooms, self._metrics = rooms, metrics
        self._limits = limits or RtmpLimits()
        self._decoder = ChunkDecoder(self._limits.preauth_chunk)
        self.authenticated = False  # a publish has been accepted on this connection
        self._publish_by = 0.0  # loop time by which a publish must be accepted
        peer = writer.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.state: State = "handshake"
        self.room: Room | None = None
        self.speaker: Speaker | None = None
        self._stream_id = 0
        self._aac: AacDecoder | None = None
        self._decode_errors = 0  # frames in a row that did not decode
        self._decode_error: Exception | None = None  # the last one's reason
        self._bytes_in = 0
        self._acked = 0
        self._peer_window = WINDOW

    def _set_state(self, state: State) -> None:
        if state != self.state:
            log.debug("rtmp %s: %s → %s", self.remote, self.state, state)
            self.state = state

    async def run(self) -> None:
        outcome = "closed"
        limits = self._limits
        loop = asyncio.get_running_loop()
        try:
            try:
                await asyncio.wait_for(self._handshake(), limits.handshake_seconds)
            except TimeoutError:
                raise DeadlinePassed("handshake_deadline", f"handshake not finished within "
                                     f"{limits.handshake_seconds:g} s") from None
            self._set_state("connecting")
            self._publish_by = loop.time() + limits.publish_seconds
            while self.state != "closed":
                data = await self._read(loop)
                if not data:
                    break
                self._metrics.rtmp_reads.inc()
                self._bytes_in += len(data)
                if not self.authenticated and self._bytes_in > limits.preauth_bytes:
                    self._metrics.limit_hits.labels(limit="rtmp_preauth_bytes").inc()
                    raise LimitExceeded(f"over {limits.preauth_bytes} bytes sent before a "
                                        "stream key was accepted")
                for msg in self._decoder.feed(data):
                    await self._handle(msg)
                await self._acknowledge()
        except SessionClosed as exc:
            outcome = str(exc)
            await self._linger(LINGER_SECONDS)
        except DeadlinePassed as exc:
            outcome = "timeout"
            self._metrics.rtmp_errors.labels(kind="timeout").inc()
            self._metrics.limit_hits.labels(limit=f"rtmp_{exc.kind}").inc()
            log.info("rtmp %s: %s (state %s); closing", self.remote, exc, self.state)
        except asyncio.IncompleteReadError:
            outcome = "truncated"
            self._metrics.rtmp_errors.labels(kind="truncated").inc()
            log.info("rtmp %s: connection ended during the handshake", self.remote)
        except LimitExceeded as exc:
            outcome = "limit"
            self._metrics.rtmp_errors.labels(kind="limit").inc()
            log.warning("rtmp %s: %s; closing", self.remote, exc)
        except ProtocolError as exc:
            outcome = "protocol"
            self._metrics.rtmp_errors.labels(kind="protocol").inc()
            log.warning("rtmp %s: protocol error: %s; closing", self.remote, exc)
        except (ConnectionError, OSError) as exc:
            outcome = "network"
            log.info("rtmp %s: connection lost: %s", self.remote, exc)
        except Exception:  # a bug here must cost one connection, never the server
            outcome = "internal"
            self._metrics.rtmp_errors.labels(kind="internal").inc()
            log.exception("rtmp %s: unexpected error; closing", self.remote)
        finally:
            self._metrics.rtmp_connections.labels(outcome=outcome).inc()
            await self.close()

    async def close(self) -> None:
        self._leave()
        self._set_state("closed")
        if not self._writer.is_closing():
            self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _linger(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            await self._writer.drain()
            while (left := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(self._reader.read(65_536), left):
                    return
        except (TimeoutError, ConnectionError, OSError):
            return

    async def _read(self, loop: asyncio.AbstractEventLoop) -> bytes:
        """The next bytes, within whichever deadline applies now."""
        if self.state == "publishing":
            # `asyncio.timeout`, not `wait_for`: a publisher's audio takes ~200 reads a
            # second, and `wait_for` wraps each in a task of its own.
            try:
                async with asyncio.timeout(self._limits.idle_seconds):
                    return await self._reader.read(65_536)
            except TimeoutError:
                raise DeadlinePassed("idle_deadline", f"nothing received for "
                                     f"{self._limits.idle_seconds:g} s") from None
        left = self._publish_by - loop.time()
        # Until the key is accepted, read no further than the pre-auth cap (plus one byte,
        # so that going over it is seen).
        size = min(65_536, max(1, self._limits.preauth_bytes - self._bytes_in + 1))
        if self.authenticated:
            size = 65_536
        try:
            if left <= 0:
                raise TimeoutError
            return await asyncio.wait_for(self._reader.read(size), left)
        except TimeoutError:
            raise DeadlinePassed("publish_deadline", f"no publish accepted within "
                                 f"{self._limits.publish_seconds:g} s of the handshake") from None

    # --- handshake ------------------------------------------------------------------
    async def _handshake(self) -> None:
        c0 = await self._reader.readexactly(1)
        handshake.check_c0(c0)
        c1 = await self._reader.readexactly(handshake.PACKET_SIZE)
        self._writer.write(handshake.server_reply(c1, int(time.monotonic() * 1000)))
        await self._writer.drain()
        await self._reader.readexactly(handshake.PACKET_SIZE)  # C2: nothing in it we need

    # --- messages -------------------------------------------------------------------
    async def _handle(self, msg: Message) -> None:
        if msg.type_id == AUDIO:
            self._audio(msg)
        elif msg.type_id in (COMMAND_AMF0, COMMAND_AMF3):
            await self._command(Command.parse(msg))
        elif msg.type_id == WINDOW_ACK_SIZE and len(msg.payload) >= 4:
            self._peer_window = max(1, int.from_bytes(msg.payload[:4], "big"))
        elif msg.type_id == USER_CONTROL and msg.payload[:2] == b"\x00\x06":
            # PingRequest: answer with PingResponse carrying the same timestamp.
            self._send(Message(USER_CONTROL, 0, 0, b"\x00\x07" + msg.payload[2:6], 2))
        elif msg.type_id == DATA_AMF0:
            pass  # @setDataFrame/onMetaData: informative only
        # Video, aggregate and shared-object messages are ignored without harm.

    async def _command(self, cmd: Command) -> None:
        name = cmd.name
        if name == "connect":
            await self._connect(cmd)
        elif self.state == "connecting":
            raise ProtocolError(f"command {name!r} before connect")
        elif name in ("releaseStream", "FCPublish", "getStreamLength"):
            self._result(cmd.transaction_id, None, UNDEFINED)
        elif name == "createStream":
            self._stream_id += 1
            if self._stream_id > 8:
                raise LimitExceeded("more than 8 streams created on one connection")
            self._result(cmd.transaction_id, None, float(self._stream_id))
        elif name == "publish":
            await self._publish(cmd)
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.speaker is not None:
                self._leave()
                self._set_state("connected")
                self._low_water(1)  # the next command is answered as soon as it comes
                # Publishing again must happen as promptly as the first time.
                self._publish_by = asyncio.get_running_loop().time() + self._limits.publish_seconds
        elif name == "play":
            self._send(on_status(self._stream_id, status(
                "NetStream.Play.Failed", "this server only takes publishers", "error")))
            await self._writer.drain()
            raise SessionClosed("play refused")
        elif name in ("_result", "_error", "onBWDone", "_checkbw"):
            pass
        else:
            log.debug("rtmp %s: ignoring command %r", self.remote, name)

    async def _connect(self, cmd: Command) -> None:
        if self.state != "connecting":
            raise ProtocolError("connect sent twice")
        obj = cmd.command_object if isinstance(cmd.command_object, dict) else {}
        app = str(obj.get("app", "")).split("?", 1)[0].strip("/")
        if app != APP:
            self._send(Command("_error", cmd.transaction_id, None, (status(
                "NetConnection.Connect.Rejected",
                f"unknown application {app!r}; publish to rtmp://HOST:PORT/{APP}/STREAM_KEY",
                "error"),)).to_message())
            await self._writer.drain()
            self._metrics.publish_refused.labels(protocol="rtmp", reason="app").inc()
            log.info("rtmp %s: connect to unknown app %r refused", self.remote, app)
            raise SessionClosed("bad app")
        self._send(window_ack_size(WINDOW))
        self._send(set_peer_bandwidth(WINDOW))
        self._send(set_chunk_size(OUT_CHUNK_SIZE))
        self._out_chunk = OUT_CHUNK_SIZE
        self._send(Command("_result", cmd.transaction_id, {
            "fmsVer": "FMS/3,0,1,123", "capabilities": 31.0,
        }, (status("NetConnection.Connect.Success", "Connection succeeded.",
                   objectEncoding=0.0),)).to_message())
        await self._writer.drain()
        self._set_state("connected")

    async def _publish(self, cmd: Command) -> None:
        stream_id = self._stream_id or 1
        if self.speaker is not None:
            raise ProtocolError("publish on a connection that is already publishing")
        key = cmd.args[0] if cmd.args and isinstance(cmd.args[0], str) else ""
        key, _, query = key.partition("?")
        try:
            room = await self._rooms.find_by_key(key)
            self.room = room
            self.speaker = await self._rooms.speak(room, "rtmp", self.remote, self._disconnect,
                                                   name_in_query(query))
        except BadKey:
            self._refuse(stream_id, "NetStream.Publish.BadName", "invalid stream key", "key")
            await self._writer.drain()
            raise SessionClosed("bad key") from None
        except (RoomFull, RoomEnded, RoomElsewhere, Unavailable) as exc:
            self._refuse(stream_id, "NetStream.Publish.Rejected", str(exc), "room")
            await self._writer.drain()
            raise SessionClosed("room refused") from None
        self._send(stream_begin(stream_id))
        self._send(on_status(stream_id, status(
            "NetStream.Publish.Start", f"publishing into room {room.name}",
            details=room.name, clientid=self.speaker.id)))
        await self._writer.drain()
        if not self.authenticated:
            self.authenticated = True
            self._decoder.limits = self._limits.chunk
        self._set_state("publishing")
        self._low_water(PUBLISHING_LOW_WATER)
        self._metrics.rtmp_publishes.inc()

    def _low_water(self, size: int) -> None:
        """Wake for at least `size` received bytes (see the module docstring), where the
        platform has the option."""
        sock = self._writer.get_extra_info("socket")
        option = getattr(socket, "SO_RCVLOWAT", None)
        if sock is None or option is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:
            log.debug("rtmp %s: cannot set the receive low-water mark: %s", self.remote, exc)

    def _refuse(self, stream_id: int, code: str, description: str, reason: str) -> None:
        self._send(on_status(stream_id, status(code, description, "error")))
        self._metrics.publish_refused.labels(protocol="rtmp", reason=reason).inc()
        log.info("rtmp %s: publish refused: %s", self.remote, description)

    def _audio(self, msg: Message) -> None:
        if self.speaker is None or not msg.payload:
            return
        self._give_up_if_undecodable()
        try:
            tag = AudioTag.parse(msg.payload)
            if tag.is_sequence_header:
                self._aac = AacDecoder(AudioSpecificConfig.parse(tag.data))
                log.info("rtmp %s: AAC object type %d, %d Hz, %d ch", self.remote,
                         self._aac.config.object_type, self._aac.config.sample_rate,
                         self._aac.config.channel_config)
                return
            if self._aac is None:
                raise DecodeError("AAC frame before the AAC sequence header")
            aac, data = self._aac, tag.data
            # Decoded when the program reaches the moment it arrived (`ingest.jitter`).
            self.speaker.push(lambda: self._decode(aac, data))
        except UnsupportedCodec as exc:
            self._send(on_status(self._stream_id or 1, status(
                "NetStream.Publish.Failed", str(exc), "error")))
            self._metrics.publish_refused.labels(protocol="rtmp", reason="codec").inc()
            log.warning("rtmp %s: %s", self.remote, exc)
            raise SessionClosed("unsupported codec") from None
        except (DecodeError, ProtocolError) as exc:
            self._decode_failed(exc)
            self._give_up_if_undecodable()

    def _give_up_if_undecodable(self) -> None:
        """Refuse the publisher once its audio has failed to decode too many times in a row
        (frames decoded by the program clock are counted when it reaches them, so this runs
        on the next audio message)."""
        if self._decode_errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
            self._send(on_status(self._stream_id or 1, status(
                "NetStream.Publish.Failed", f"audio does not decode: {self._decode_error}",
                "error")))
            raise SessionClosed("undecodable audio")

    def _decode(self, aac: AacDecoder, data: bytes) -> np.ndarray | None:
        """Run by the program clock, in the room's mix: whatever goes wrong here costs this
        frame (and, 50 in a row, this connection), never the block everyone hears."""
        try:
            pcm = aac.decode(data)
        except DecodeError as exc:
            self._decode_failed(exc)
            return None
        except Exception as exc:  # a bug: logged, and counted as a frame that did not decode
            log.exception("rtmp %s: decoding an AAC frame failed unexpectedly", self.remote)
            self._decode_failed(exc)
            return None
        self._decode_errors = 0
        return pcm

    def _decode_failed(self, exc: Exception) -> None:
        """Count a frame that did not decode; once too many in a row, the next audio
        message ends the session."""
        self._metrics.decode_errors.inc()
        self._decode_errors += 1
        self._decode_error = exc
        log.debug("rtmp %s: %s", self.remote, exc)

    # --- plumbing -------------------------------------------------------------------
    _out_chunk = 128

    def _send(self, msg: Message) -> None:
        if not self._writer.is_closing():
            self._writer.write(encode_message(msg, self._out_chunk))

    def _result(self, txn: float, obj: object, *args: object) -> None:
        self._send(Command("_result", txn, obj, tuple(args)).to_message())

    async def _acknowledge(self) -> None:
        if self._bytes_in - self._acked >= self._peer_window:
            self._acked = self._bytes_in
            self._send(acknowledgement(self._bytes_in))

    def _leave(self) -> None:
        if self.speaker is not None and self.room is not None:
            self._rooms.leave(self.room, self.speaker)
        self.speaker = None

    async def _disconnect(self) -> None:
        """The room removed this speaker (API or room end): drop the connection."""
        self.speaker = None
        if not self._writer.is_closing():
            self._send(on_status(self._stream_id or 1, status(
                "NetStream.Unpublish.Success", "removed from the room")))
            self._writer.close()
