// Captures the microphone and resamples it to 16 kHz mono float32 (box-filtered decimation: each output sample is
// the mean of the input samples since the previous one, a low-pass for speech), posted in ~100 ms blocks.
class Capture16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / 16000;  // input samples per output sample
    this.next = this.ratio;  // input position of the next output sample
    this.pos = 0;  // input samples seen
    this.acc = 0;
    this.count = 0;
    this.block = new Float32Array(1600);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const ch = input[0];
    const n = ch.length;
    for (let i = 0; i < n; i++) {
      let x = ch[i];
      for (let c = 1; c < input.length; c++) x += input[c][i];
      this.acc += x / input.length;
      this.count += 1;
      this.pos += 1;
      if (this.pos >= this.next) {
        this.block[this.filled++] = this.acc / this.count;
        this.acc = 0;
        this.count = 0;
        this.next += this.ratio;
        if (this.filled === this.block.length) {
          this.port.postMessage(this.block, [this.block.buffer]);
          this.block = new Float32Array(1600);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('capture-16k', Capture16k);
