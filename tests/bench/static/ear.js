// Evaluated in a page by the mouth-to-ear benchmark (one function expression). It puts the
// marker-onsets worklet on the page's audio and keeps what the benchmark reads back:
//   window.ear.onsets  [{at, samples}]: at = when the onset was at the speakers (ms, page clock:
//                      performance.timeOrigin + performance.now()), or for a microphone when
//                      the page's audio graph took it in
//   window.ear.stalls  [{from, to, position}]: the <audio> playhead stood still at `position`
//                      for more than 300 ms
//   window.ear.refs    [{at, latency, pdt, target, rate, level}] once a second: hls.js's own
//                      latency, now minus the playhead's PROGRAM-DATE-TIME, its target
//                      latency, the playback rate and the rendition playing
// args: {code: the worklet's source, source: "element" | "stream", hls: an expression
// naming the page's Hls instance, or null}
async (args) => {
  const ear = window.ear = { onsets: [], stalls: [], refs: [], errors: [] };
  const ctx = new AudioContext();
  const url = URL.createObjectURL(new Blob([args.code], { type: "text/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(ctx, "marker-onsets", { outputChannelCount: [2] });
  const toSpeakers = ctx.createGain();
  let input;
  if (args.source === "stream") {
    // The broadcaster page's microphone (its `stream`); heard nowhere, only looked at.
    input = ctx.createMediaStreamSource(stream);
    toSpeakers.gain.value = 0;
  } else {
    input = ctx.createMediaElementSource(document.querySelector("audio"));
  }
  input.connect(node).connect(toSpeakers).connect(ctx.destination);
  // A frame's time at the speakers, from the context's own pairing of its clock with the
  // page's; a microphone's onset is dated when the graph rendered it, that much earlier.
  const ahead = args.source === "stream" ? (ctx.baseLatency + (ctx.outputLatency || 0)) * 1000 : 0;
  node.port.onmessage = (e) => {
    const ts = ctx.getOutputTimestamp();
    const pageNow = performance.timeOrigin + performance.now();
    const at = ts.performanceTime > 0
      ? performance.timeOrigin + ts.performanceTime + (e.data.frame / ctx.sampleRate - ts.contextTime) * 1000
      : pageNow - (ctx.currentTime - e.data.frame / ctx.sampleRate) * 1000;
    ear.onsets.push({ at: at - ahead, rate: ctx.sampleRate, samples: Array.from(e.data.samples) });
  };
  if (args.source === "element") {
    const audio = document.querySelector("audio");
    let last = audio.currentTime, movedAt = performance.timeOrigin + performance.now(), still = false;
    setInterval(() => {
      const now = performance.timeOrigin + performance.now();
      if (audio.currentTime !== last) {
        if (still) ear.stalls.push({ from: movedAt, to: now, position: last });
        still = false;
        last = audio.currentTime;
        movedAt = now;
      } else if (!audio.paused && now - movedAt > 300) {
        still = true;
      }
    }, 50);
    const hls = () => (args.hls ? eval(args.hls) : null);
    setInterval(() => {
      const h = hls();
      if (!h) return;
      const date = h.playingDate;
      ear.refs.push({
        at: performance.timeOrigin + performance.now(),
        latency: Number.isFinite(h.latency) ? h.latency : null,
        pdt: date ? (Date.now() - date.getTime()) / 1000 : null,
        target: Number.isFinite(h.targetLatency) ? h.targetLatency : null,
        rate: audio.playbackRate,
        level: h.currentLevel >= 0 && h.levels[h.currentLevel]
          ? `${h.levels[h.currentLevel].audioCodec} ${h.levels[h.currentLevel].bitrate}` : null,
      });
    }, 1000);
  }
  return { rate: ctx.sampleRate, base: ctx.baseLatency, output: ctx.outputLatency || 0 };
}
