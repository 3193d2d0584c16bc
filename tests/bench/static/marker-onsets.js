// AudioWorklet of the mouth-to-ear benchmark: finds the onset of each marker burst in the
// audio it is given and posts the onset's frame with the burst's first samples, so that the
// benchmark can say when the burst was there and which marker it was. Audio passes through
// unchanged: on a listener page this node sits between the <audio> element and the speakers.
//
// An onset is the first sample above ON after at least QUIET_S of blocks below OFF; the
// markers are 100 ms bursts once a second, so every marker has 900 ms of quiet before it.
const ON = 0.02, OFF = 0.01, QUIET_S = 0.3, GRAB = 2048;

class MarkerOnsets extends AudioWorkletProcessor {
  constructor() {
    super();
    this.quietFrames = 0;
    this.grab = null;
    this.filled = 0;
    this.onset = 0;
  }

  process(inputs, outputs) {
    const input = inputs[0], output = outputs[0];
    for (let c = 0; c < output.length; c++) {
      if (input.length) output[c].set(input[Math.min(c, input.length - 1)]);
    }
    if (!input.length) return true;
    const n = input[0].length, mono = new Float32Array(n);
    let energy = 0;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < input.length; c++) v += input[c][i];
      mono[i] = v / input.length;
      energy += mono[i] * mono[i];
    }
    const rms = Math.sqrt(energy / n);
    if (this.grab) {
      const take = Math.min(n, GRAB - this.filled);
      this.grab.set(mono.subarray(0, take), this.filled);
      this.filled += take;
      if (this.filled === GRAB) {
        this.port.postMessage({ frame: this.onset, samples: this.grab });
        this.grab = null;
      }
    } else if (this.quietFrames >= QUIET_S * sampleRate) {
      let k = 0;
      while (k < n && Math.abs(mono[k]) < ON) k++;
      if (k < n) {
        this.onset = currentFrame + k;
        this.grab = new Float32Array(GRAB);
        this.grab.set(mono.subarray(k), 0);
        this.filled = n - k;
      }
    }
    this.quietFrames = rms < OFF ? this.quietFrames + n : 0;
    return true;
  }
}

registerProcessor("marker-onsets", MarkerOnsets);
