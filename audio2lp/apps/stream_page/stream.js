// The live page of `audio2lp serve`: the portrait, then the microphone as 16 kHz s16le PCM over WS /stream/ws
// (protocol: audio2lp/apps/server_stream.py); each frame's JPEG is shown as it arrives. window.a2lp holds what
// happened (for people debugging and for the browser test).
'use strict';

const $ = (id) => document.getElementById(id);
const a2lp = { state: 'idle', sentChunks: 0, sentSamples: 0, peak: 0, frames: [], ready: null, end: null,
  error: null, dropped: 0, endSent: false };
window.a2lp = a2lp;

let ws = null;
let audio = null;  // {ctx, stream, node}
let pendingHeader = null;
let lastUrl = null;
let t0 = 0;

function status(text) { $('status').textContent = text; }
function showError(text) { $('error').textContent = text; }

function stopMic() {
  if (!audio) return;
  audio.node.port.onmessage = null;
  audio.node.disconnect();
  audio.stream.getTracks().forEach((t) => t.stop());
  audio.ctx.close();
  audio = null;
}

function finish(state) {
  a2lp.state = state;
  stopMic();
  $('start').disabled = false;
  $('stop').disabled = true;
}

function sendAudio(block) {
  if (!ws || ws.readyState !== WebSocket.OPEN || a2lp.endSent) return;
  const pcm = new Int16Array(block.length);
  for (let i = 0; i < block.length; i++) {
    const x = Math.max(-1, Math.min(1, block[i]));
    pcm[i] = Math.round(x * 32767);
    a2lp.peak = Math.max(a2lp.peak, Math.abs(x));
  }
  ws.send(pcm.buffer);
  a2lp.sentChunks += 1;
  a2lp.sentSamples += pcm.length;
}

function onText(msg) {
  if (msg.type === 'frame') { pendingHeader = msg; return; }
  if (msg.type === 'ready') {
    a2lp.ready = msg;
    status(`ready: ${msg.width}x${msg.height} at ${msg.fps} fps, look-ahead ${msg.lookahead_ms} ms; speak now`);
  } else if (msg.type === 'dropped') {
    a2lp.dropped = msg.total_seconds;
  } else if (msg.type === 'end') {
    a2lp.end = msg;
    status(`done: ${msg.frames} frames, ${msg.seconds.toFixed(1)} s of speech` +
      (msg.dropped_seconds ? `, ${msg.dropped_seconds.toFixed(1)} s dropped (the renderer was behind)` : ''));
  } else if (msg.type === 'error') {
    a2lp.error = msg;
    showError(`${msg.reason}`);
  }
}

function onFrame(data) {
  const h = pendingHeader;
  if (h && h.expectAudio) { pendingHeader = null; return; }  // the frame's audio (this page does not ask for it)
  pendingHeader = h && h.audio_samples ? { ...h, expectAudio: true } : null;
  const url = URL.createObjectURL(new Blob([data], { type: 'image/jpeg' }));
  const img = $('view');
  const old = lastUrl;
  img.onload = () => { if (old) URL.revokeObjectURL(old); };
  img.src = url;
  lastUrl = url;
  const at = (performance.now() - t0) / 1000;
  a2lp.frames.push({ index: h ? h.index : -1, time: h ? h.time : -1, bytes: data.byteLength, at,
    sentSamples: a2lp.sentSamples, endSent: a2lp.endSent });
  const kept = a2lp.sentSamples / 16000 - a2lp.dropped;  // the stream's own timeline leaves dropped audio out
  status(`frame ${h.index} at ${h.time.toFixed(2)} s, ${(kept - h.time).toFixed(2)} s behind your voice` +
    (a2lp.dropped ? ` (${a2lp.dropped.toFixed(1)} s of speech dropped: the renderer is slower than real time)` : ''));
}

async function start() {
  showError('');
  const file = $('portrait').files[0];
  if (!file) { showError('Pick a portrait photo first.'); return; }
  $('start').disabled = true;
  Object.assign(a2lp, { state: 'starting', sentChunks: 0, sentSamples: 0, peak: 0, frames: [], ready: null,
    end: null, error: null, dropped: 0, endSent: false });
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true,
      noiseSuppression: true } });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule('/stream/worklet.js');
    const node = new AudioWorkletNode(ctx, 'capture-16k');
    const source = ctx.createMediaStreamSource(stream);
    source.connect(node);
    audio = { ctx, stream, node };
  } catch (e) {
    finish('failed');
    showError(`The microphone cannot be used: ${e.message || e}`);
    return;
  }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  ws = new WebSocket(`${proto}//${location.host}/stream/ws`);
  ws.binaryType = 'arraybuffer';
  ws.onopen = async () => {
    ws.send(await file.arrayBuffer());
    const options = { pose_scale: Number($('pose_scale').value), seed: Number($('seed').value) };
    ws.send(JSON.stringify({ type: 'start', format: 's16le', sample_rate: 16000, overflow: 'drop', audio: false,
      jpeg_quality: 85, options }));
    t0 = performance.now();
    a2lp.state = 'streaming';
    $('stop').disabled = false;
    audio.node.port.onmessage = (e) => sendAudio(e.data);
    status('preparing the portrait...');
  };
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') onText(JSON.parse(e.data));
    else onFrame(e.data);
  };
  ws.onclose = (e) => {
    if (!a2lp.end && !a2lp.error && e.code !== 1000) {
      a2lp.error = { code: e.reason || String(e.code), reason: `the connection closed (${e.code} ${e.reason})` };
      showError(a2lp.error.reason);
    }
    finish(a2lp.error ? 'failed' : 'done');
    ws = null;
  };
}

function stop() {
  $('stop').disabled = true;
  stopMic();
  if (ws && ws.readyState === WebSocket.OPEN && !a2lp.endSent) {
    ws.send(JSON.stringify({ type: 'end' }));
    a2lp.endSent = true;
    a2lp.state = 'ending';
    status('finishing the last frames...');
  }
}

$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
$('portrait').addEventListener('change', () => {
  const file = $('portrait').files[0];
  if (file) { $('view').src = URL.createObjectURL(file); status('Press Start and speak.'); }
});
