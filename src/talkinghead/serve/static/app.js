// talkinghead live avatar page: upload a portrait, stream speech (file or microphone) to
// the server as PCM16 16 kHz over a WebSocket, and play the frames that come back in
// sync with the audio.
//
// Access: requests that change something carry the X-Talkinghead-Client header (other
// pages cannot send it without the server's consent), and, when the server has a token,
// "Authorization: Bearer TOKEN" (the WebSocket sends it in its start message). The token
// comes from the address's fragment (#token=..., never sent to the server; `talkinghead
// serve --token` prints that address) or the token box, and is kept for this tab only.
//
// Sync: the AudioContext clock is the master. Audio is scheduled at t0 + sample/16000
// and frame i is drawn when that clock reaches t0 + i/25 (its timestamp). When the next
// frame has not arrived in time, the audio context is suspended (its clock stops) until
// a few frames are buffered, so audio never runs ahead of the picture.
//
// Adaptive buffer: a server slower than real time would make that stop-and-go (a few
// frames of sound, then seconds of silence). After a stall the page waits for as many
// frames as the rest of the speech needs to play through at the server's realtime
// factor (its "stats" messages): remaining x (1 - factor); without a factor, or for
// the microphone (whose length is unknown), the wait doubles with every stall.
//
// Conversation mode (the "conversation" box): one session across turns. Each "speak"
// sends the file as one more turn; the server fills the time between turns with idle
// motion, and its "speech" / "idle" / "interrupted" events say where on its timeline the
// page's audio plays (from "offset_s" of all speech sent, at "at_s") and where it stops.
// "Interrupt" drops what the page has not sent yet and tells the server; "End" ends it.
//
// For tests: window.talkingheadFrames lists every frame received ({index, timestamp}, the
// server's header); window.talkingheadEvents the conversation events and "end"; with
// window.talkingheadKeepFrames set before a session, each frame's JPEG is kept too.
"use strict";

const FPS = 25;
const RATE = 16000;
const SAMPLES_PER_FRAME = RATE / FPS;
const HEADER_BYTES = 16; // "THF1", uint32 index, float64 timestamp (little-endian)
const CHUNK = 1600; // samples per message: 100 ms
const PREBUFFER_S = 0.12; // delay between the first frame and the start of playback
const REBUFFER_FRAMES = 5; // frames buffered before resuming after the first stall
const MAX_REBUFFER_FRAMES = 60 * FPS; // never wait for more than a minute of frames
const MAX_BUFFERED_BYTES = 64 * 1024; // WebSocket send buffer the page lets build up

const $ = (id) => document.getElementById(id);
const setText = (id, value) => { $(id).textContent = String(value); };
const showError = (message) => setText("error", message || "");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ access

const CSRF_HEADER = "X-Talkinghead-Client";

function takeTokenFromAddress() {
  const match = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (!match) return;
  sessionStorage.setItem("talkinghead-token", decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search); // out of the address bar
}
takeTokenFromAddress();
const token = () => sessionStorage.getItem("talkinghead-token") || "";

// fetch() with the headers this server wants.
function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set(CSRF_HEADER, "page");
  if (token()) headers.set("Authorization", `Bearer ${token()}`);
  return fetch(path, { ...options, headers });
}

async function checkAccess() {
  const health = await (await fetch("/healthz")).json();
  const ok = !health.token_required || Boolean(token());
  $("token-box").hidden = ok;
  return ok;
}

$("token-save").addEventListener("click", async () => {
  sessionStorage.setItem("talkinghead-token", $("token").value.trim());
  $("token").value = "";
  showError("");
  if (await checkAccess()) {
    refreshAvatars().catch((err) => showError(`cannot list avatars: ${err.message || err}`));
  }
});

// ------------------------------------------------------------------ avatars

async function refreshAvatars(select) {
  const response = await api("/avatars");
  if (response.status === 401) {
    sessionStorage.removeItem("talkinghead-token");
    $("token-box").hidden = false;
    throw new Error("the token is missing or wrong");
  }
  const { avatars } = await response.json();
  const menu = $("avatar");
  const keep = select || menu.value;
  menu.innerHTML = "";
  if (!avatars.length) menu.add(new Option("(no avatar yet)", ""));
  for (const a of avatars) {
    menu.add(new Option(`${a.kind} ${a.width}×${a.height} · ${a.id.slice(0, 8)}`, a.id));
  }
  if (keep && avatars.some((a) => a.id === keep)) menu.value = keep;
  updateThumb();
  updateButtons();
}

async function updateThumb() {
  const id = $("avatar").value;
  const thumb = $("thumb");
  thumb.hidden = !id;
  if (thumb.src.startsWith("blob:")) URL.revokeObjectURL(thumb.src);
  thumb.removeAttribute("src");
  if (!id) return;
  try {
    // Fetched, not linked: the request may need the token.
    const response = await api(`/avatars/${id}/thumbnail`);
    if (response.ok && $("avatar").value === id) {
      thumb.src = URL.createObjectURL(await response.blob());
    }
  } catch (err) {
    thumb.hidden = true; // only a preview: the avatar itself is fine
  }
}

$("avatar").addEventListener("change", () => { updateThumb(); updateButtons(); });

$("portrait-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const status = $("upload-status");
  status.className = "";
  status.textContent = `uploading ${file.name}…`;
  try {
    // A form with the file; the server decides what it is by decoding it.
    const form = new FormData();
    form.append("file", file);
    const response = await api("/avatars", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      status.className = "error";
      status.textContent = `refused (${response.status}): ${body.detail || response.statusText}`;
      return;
    }
    await refreshAvatars(body.id);
    status.textContent = `registered avatar ${body.id}`; // once it is selectable
  } catch (err) {
    status.className = "error";
    status.textContent = `upload failed: ${err.message || err}`;
  }
});

// ------------------------------------------------------------------ audio file

let filePcm = null;

function mixDown(buffer) {
  if (buffer.numberOfChannels === 1) return buffer.getChannelData(0).slice();
  const out = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < out.length; i++) out[i] += data[i] / buffer.numberOfChannels;
  }
  return out;
}

$("audio-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  filePcm = null;
  showError("");
  updateButtons();
  if (!file) return;
  try {
    // An offline context at 16 kHz decodes and resamples in one step.
    const decoder = new OfflineAudioContext(1, 1, RATE);
    filePcm = mixDown(await decoder.decodeAudioData(await file.arrayBuffer()));
    setText("frames-expected", Math.ceil(filePcm.length / SAMPLES_PER_FRAME));
  } catch (err) {
    showError(`cannot decode ${file.name}: ${err.message || err}`);
  }
  updateButtons();
});

// ------------------------------------------------------------------ playback in sync

class SyncPlayer {
  constructor(canvas) {
    this.canvas = canvas;
    this.g = canvas.getContext("2d");
    this.audio = new AudioContext();
    this.t0 = null; // audio-clock time of sample 0 / frame 0
    this.pendingAudio = [];
    this.audioSamples = 0;
    this.frames = new Map(); // index -> ImageBitmap, not yet shown
    this.maxIndex = -1;
    this.shown = -1;
    this.ended = false;
    this.totalFrames = null;
    this.stalled = false;
    this.stopped = false;
    this.sources = [];
    this.realtimeFactor = null; // the server's, from its "stats" messages
    this.expectedFrames = null; // frames of the whole speech, when known (a file)
    this.stalls = 0;
    this.resumeAt = REBUFFER_FRAMES; // frames ahead of the clock needed to resume
    this.conversation = false; // audio placed by the server's events, not by its offset
    this.sent = []; // conversation: every chunk sent, {pcm, offset} in samples
    this.stretch = null; // conversation: the speech playing now, {at, offset} in seconds
  }

  // Frames to buffer after a stall so that the rest plays without another one.
  rebufferTarget() {
    // A conversation's server runs at most 0.4 s ahead of real time: a longer wait
    // cannot build a bigger buffer, it only pauses longer.
    if (this.conversation) return REBUFFER_FRAMES;
    const due = Math.max(this.due(), 0);
    const remaining = this.expectedFrames === null ? null : Math.max(this.expectedFrames - due, 0);
    let target = REBUFFER_FRAMES * 2 ** Math.max(this.stalls - 1, 0);
    const factor = this.realtimeFactor;
    if (remaining !== null && factor !== null && factor < 1) {
      // While R frames play (R / 25 s) the server adds factor x R: hold the difference.
      target = Math.max(Math.ceil(remaining * (1 - factor) * 1.1), REBUFFER_FRAMES);
    }
    if (remaining !== null) target = Math.min(target, remaining);
    return Math.min(target, MAX_REBUFFER_FRAMES);
  }

  addAudio(pcm) {
    const item = { pcm, offset: this.audioSamples };
    this.audioSamples += pcm.length;
    if (this.conversation) {
      // Played once the server says where: now, if this continues the speech playing.
      this.sent.push(item);
      if (this.stretch && this.t0 !== null) this.scheduleInStretch(item);
    } else if (this.t0 === null) this.pendingAudio.push(item);
    else this.schedule(item);
  }

  schedule({ pcm, offset }) {
    this.scheduleAt(pcm, this.t0 + offset / RATE);
  }

  // Plays `pcm` from audio-clock time `when`, or the part of it still to come.
  scheduleAt(pcm, when) {
    const buffer = this.audio.createBuffer(1, pcm.length, RATE);
    buffer.copyToChannel(pcm, 0);
    const source = this.audio.createBufferSource();
    source.buffer = buffer;
    source.connect(this.audio.destination);
    const now = this.audio.currentTime;
    if (when >= now) source.start(when);
    else if (now - when < buffer.duration) source.start(now, now - when);
    else return; // entirely in the past
    this.sources.push(source);
  }

  scheduleInStretch({ pcm, offset }) {
    const { at, offset: from } = this.stretch;
    const start = offset / RATE - from; // seconds into the stretch (negative: before it)
    const skip = Math.max(Math.round(-start * RATE), 0);
    if (skip >= pcm.length) return;
    this.scheduleAt(pcm.subarray(skip), this.t0 + at + Math.max(start, 0));
  }

  // A conversation event, in order with the frames (t0 is known once frame 0 is in).
  onEvent(message) {
    if (!this.conversation) return;
    if (message.type === "speech") {
      this.stretch = { at: message.at_s, offset: message.offset_s };
      if (this.t0 !== null) for (const item of this.sent) this.scheduleInStretch(item);
    } else if (message.type === "idle" || message.type === "interrupted") {
      this.stretch = null;
      if (this.t0 === null) return;
      const when = Math.max(this.t0 + message.at_s, this.audio.currentTime);
      for (const source of this.sources) { try { source.stop(when); } catch (e) { /* done */ } }
      this.sources = [];
      // Bounded: the server holds at most seconds of speech, a minute back is never due.
      const keepFrom = this.audioSamples - 60 * RATE;
      this.sent = this.sent.filter((item) => item.offset + item.pcm.length > keepFrom);
    }
  }

  addFrame(index, bitmap) {
    if (this.stopped) { bitmap.close(); return; }
    this.frames.set(index, bitmap);
    this.maxIndex = Math.max(this.maxIndex, index);
    if (this.t0 === null) this.begin();
    if (this.stalled && (this.ended || this.maxIndex >= this.due() + this.resumeAt)) this.resume();
  }

  finish(totalFrames) {
    this.ended = true;
    this.totalFrames = totalFrames;
    if (this.stalled) this.resume();
    if (this.t0 === null && totalFrames === 0) setText("playback", "finished");
  }

  begin() {
    this.t0 = this.audio.currentTime + PREBUFFER_S;
    for (const item of this.pendingAudio) this.schedule(item);
    this.pendingAudio = [];
    if (this.stretch) for (const item of this.sent) this.scheduleInStretch(item);
    setText("playback", "playing");
    requestAnimationFrame(() => this.tick());
  }

  due() {
    return Math.floor((this.audio.currentTime - this.t0) * FPS);
  }

  resume() {
    this.stalled = false;
    setText("playback", "playing");
    this.audio.resume();
  }

  tick() {
    if (this.stopped) return;
    const due = this.due();
    let pick = -1;
    for (const index of this.frames.keys()) if (index <= due && index > pick) pick = index;
    if (pick > this.shown || (this.shown < 0 && this.frames.has(0))) {
      // Before playback starts, frame 0 is shown as a still.
      const index = pick >= 0 ? pick : 0;
      this.draw(this.frames.get(index));
      this.shown = index;
      for (const [i, bitmap] of this.frames) {
        if (i <= index) { bitmap.close(); this.frames.delete(i); }
      }
      setText("frames-shown", index + 1);
    }
    const last = this.totalFrames === null ? Infinity : this.totalFrames - 1;
    if (!this.ended && due > this.maxIndex && due >= 0 && this.audio.state === "running") {
      this.stalled = true; // the picture is late: hold the audio clock
      this.stalls += 1;
      this.resumeAt = this.rebufferTarget();
      setText("stalls", this.stalls);
      setText("rebuffer", this.resumeAt);
      setText("playback", "buffering");
      this.audio.suspend();
    }
    if (this.ended && this.shown >= last && due > last) {
      setText("playback", "finished");
      return;
    }
    requestAnimationFrame(() => this.tick());
  }

  draw(bitmap) {
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
    }
    this.g.drawImage(bitmap, 0, 0);
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) { try { source.stop(); } catch (e) { /* not started */ } }
    for (const bitmap of this.frames.values()) bitmap.close();
    this.frames.clear();
    this.audio.close();
  }
}

// ------------------------------------------------------------------ WebRTC playback

// The WebRTC mode: the server sends the frames and the speech as media tracks, paced
// at 25 fps and in sync, and the <video> element plays them; the socket carries audio
// up and, for each frame, its header alone (the audio window's progress). The offer and
// the answer travel on the session's own socket, which reaches the process holding the
// session behind any proxy (Ray Serve's replicas).
const ICE_GATHER_TIMEOUT_MS = 3000;

class WebRTCPlayer {
  constructor(video) {
    this.video = video;
    this.pc = null;
    this.expectedFrames = null;
    this.realtimeFactor = null;
    this.timer = setInterval(() => this.showProgress(), 200);
  }

  // `exchange(sdp)`: sends the offer, resolves to the server's answer {sdp}.
  async connect(exchange) {
    const pc = new RTCPeerConnection({ iceServers: [] }); // host candidates only
    this.pc = pc;
    window.talkingheadPeer = pc; // for the browser test's getStats()
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (event) => {
      stream.addTrack(event.track);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.video.play().catch((err) => showError(`video: ${err.message || err}`));
    };
    pc.onconnectionstatechange = () => setText("webrtc-state", pc.connectionState);
    await pc.setLocalDescription(await pc.createOffer());
    // The server takes one offer with every candidate in it (no trickle ICE).
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") { resolve(); return; }
      const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, ICE_GATHER_TIMEOUT_MS);
    });
    const answer = await exchange(pc.localDescription.sdp);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  shown() {
    return this.video.getVideoPlaybackQuality().totalVideoFrames;
  }

  showProgress() {
    setText("frames-shown", this.shown());
    if (!this.video.paused && this.video.currentTime > 0 && $("playback").textContent === "–") {
      setText("playback", "playing");
    }
  }

  addAudio() {} // the speech comes back as the audio track
  addFrame() {}
  onEvent() {} // the track already follows the conversation's timeline

  async finish(frames) {
    // "end" comes once the server has sent every frame: wait for the last to be shown
    // (closing the connection earlier cuts them off; a busy machine decodes late).
    const deadline = performance.now() + 10000;
    while (this.shown() < frames && performance.now() < deadline) await sleep(50);
    this.showProgress();
    // What arrived, from the connection's own statistics (kept for the page's tests).
    const summary = { currentTime: this.video.currentTime, shown: this.shown() };
    if (this.pc) {
      (await this.pc.getStats()).forEach((report) => {
        if (report.type === "inbound-rtp") summary[report.kind] = report;
      });
    }
    window.talkingheadWebRTCStats = summary;
    setText("playback", "finished");
    this.stop();
  }

  stop() {
    clearInterval(this.timer);
    if (this.pc) this.pc.close();
  }
}

// ------------------------------------------------------------------ the session

class Session {
  constructor(avatar, controls) {
    this.avatar = avatar;
    this.controls = controls;
    this.webrtc = Boolean(controls.webrtc);
    this.conversation = Boolean(controls.conversation);
    // Created in the click: audio may start.
    this.player = this.webrtc ? new WebRTCPlayer($("video")) : new SyncPlayer($("canvas"));
    this.player.conversation = this.conversation;
    this.turn = 0; // bumped by an interrupt: the turns still being sent stop
    this.turnsSent = 0;
    this.interrupts = 0;
    this.keepFrames = Boolean(window.talkingheadKeepFrames);
    window.talkingheadFrames = [];
    window.talkingheadEvents = [];
    this.received = 0;
    this.firstAudioAt = null;
    this.closed = false;
    this.ending = false; // "end" sent: no more turns
    this.onClose = null;
    this.lastIndex = -1;
    this.decoding = Promise.resolve();
    this.sending = Promise.resolve(true);
    this.samplesSent = 0;
    this.window = Infinity; // seconds of audio ahead of the newest frame (from "ready")
    this.answerWaiter = null; // the WebRTC offer waiting for its answer
  }

  // The WebRTC offer on this socket; resolves to the server's {"type": "answer", "sdp"}.
  exchangeOffer(sdp) {
    return new Promise((resolve, reject) => {
      this.answerWaiter = { resolve, reject };
      this.ws.send(JSON.stringify({ type: "offer", sdp }));
    });
  }

  open() {
    return new Promise((resolve, reject) => {
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${scheme}://${location.host}/ws`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        const start = { type: "start", avatar: this.avatar, controls: this.controls };
        if (token()) start.token = token();
        ws.send(JSON.stringify(start));
      };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") { this.onFrame(event.data); return; }
        const message = JSON.parse(event.data);
        if (message.type === "ready") {
          if (message.audio_window_s) this.window = message.audio_window_s;
          if (this.webrtc) {
            this.player.connect((sdp) => this.exchangeOffer(sdp)).then(() => {
              setText("status", "streaming");
              resolve(this);
            }, (err) => {
              // The server's own error message, when it sent one, says more.
              if (!$("error").textContent) showError(err.message || String(err));
              ws.close(1000, "WebRTC failed");
            });
            return;
          }
          setText("status", "streaming");
          resolve(this);
        } else if (message.type === "answer") {
          if (this.answerWaiter) this.answerWaiter.resolve(message);
          this.answerWaiter = null;
        } else if (["speech", "idle", "interrupted"].includes(message.type)) {
          window.talkingheadEvents.push(message);
          setText("stretch", message.type === "speech" ? "speaking" : "idle");
          if (message.type === "interrupted") setText("interrupts", ++this.interrupts);
          // After the frames before it are in the player (its clock is theirs).
          this.decoding = this.decoding.then(() => this.player.onEvent(message));
        } else if (message.type === "end") {
          window.talkingheadEvents.push(message);
          setText("status", "complete");
          setText("frames-dropped", message.dropped);
          setText("frames-expected", message.expected_frames);
          // Frames are decoded in order: finish once the last one is in the player.
          this.decoding.then(() => this.player.finish(message.frames + message.dropped));
        } else if (message.type === "stats") {
          if (message.realtime_factor !== null) {
            this.player.realtimeFactor = message.realtime_factor;
            setText("realtime-factor", `${message.realtime_factor.toFixed(2)}×`);
          }
        } else if (message.type === "error") {
          showError(`${message.code}: ${message.message}`);
        }
      };
      ws.onclose = (event) => {
        this.closed = true;
        if (this.answerWaiter) {
          this.answerWaiter.reject(new Error(`closed before the WebRTC answer (${event.code})`));
          this.answerWaiter = null;
        }
        if (event.code !== 1000 && $("status").textContent !== "complete") {
          setText("status", `closed (${event.code})`);
          if (!$("error").textContent) showError(`connection closed: ${event.code} ${event.reason}`);
        }
        reject(new Error(`closed before ready (${event.code} ${event.reason})`));
        if (this.onClose) this.onClose();
        updateButtons();
      };
    });
  }

  onFrame(data) {
    const view = new DataView(data);
    const magic = String.fromCharCode(...new Uint8Array(data, 0, 4));
    if (data.byteLength < HEADER_BYTES || magic !== "THF1") {
      showError("unexpected binary message");
      return;
    }
    const index = view.getUint32(4, true);
    if (index <= this.lastIndex) showError(`frame ${index} out of order`);
    this.lastIndex = index;
    const record = { index, timestamp: view.getFloat64(8, true) };
    if (this.keepFrames) record.jpeg = new Blob([new Uint8Array(data, HEADER_BYTES)]);
    window.talkingheadFrames.push(record);
    this.received += 1;
    setText("frames-received", this.received);
    if (this.received === 1 && this.firstAudioAt !== null) {
      setText("latency", `${Math.round(performance.now() - this.firstAudioAt)} ms`);
    }
    if (this.webrtc) return; // the picture comes over WebRTC
    const jpeg = new Blob([new Uint8Array(data, HEADER_BYTES)], { type: "image/jpeg" });
    const decoded = createImageBitmap(jpeg);
    this.decoding = this.decoding.then(async () => this.player.addFrame(index, await decoded));
  }

  sendAudio(pcm) {
    // Chained, so that chunks keep their order even when the caller does not wait.
    this.sending = this.sending.then(() => this.sendNow(pcm));
    return this.sending;
  }

  async sendNow(pcm) {
    // Flow control: stay within the server's audio window ahead of the newest frame,
    // and let at most MAX_BUFFERED_BYTES wait in the browser's socket buffer.
    const ahead = () => (this.samplesSent + pcm.length) / RATE - (this.lastIndex + 1) / FPS;
    while (!this.closed && (ahead() > this.window || this.ws.bufferedAmount > MAX_BUFFERED_BYTES)) {
      await sleep(5);
    }
    if (this.closed) return false;
    const out = new Int16Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) {
      const s = Math.max(-1, Math.min(1, pcm[i]));
      out[i] = s < 0 ? s * 32768 : s * 32767;
    }
    this.player.addAudio(pcm);
    this.ws.send(out.buffer);
    this.samplesSent += pcm.length;
    if (this.firstAudioAt === null) this.firstAudioAt = performance.now();
    return true;
  }

  // One turn of a conversation: sent after the turns before it, unless interrupted.
  speakTurn(pcm) {
    const turn = this.turn;
    setText("turns", ++this.turnsSent);
    this.sending = this.sending.then(async () => {
      for (let i = 0; i < pcm.length && turn === this.turn; i += CHUNK) {
        if (!(await this.sendNow(pcm.subarray(i, i + CHUNK)))) return false;
      }
      return true;
    });
    return this.sending;
  }

  interrupt() {
    this.turn += 1; // what is not sent yet is dropped here; the server drops the rest
    if (!this.closed) this.ws.send(JSON.stringify({ type: "interrupt" }));
  }

  end() {
    this.ending = true;
    this.sending = this.sending.then(() => {
      if (!this.closed) this.ws.send(JSON.stringify({ type: "end" }));
    });
    return this.sending;
  }

  abort() {
    this.player.stop();
    if (!this.closed) this.ws.close(1000, "stopped by the user");
  }
}

let session = null;
let stopCapture = null;

function controls() {
  const webrtc = $("mode").value === "webrtc";
  $("canvas").hidden = webrtc;
  $("video").hidden = !webrtc;
  // stats: the realtime factor
  const chosen = { emotion: $("emotion").value, stats: true };
  if (webrtc) chosen.webrtc = true;
  if ($("conversation").checked) chosen.conversation = true;
  return chosen;
}

function resetStats() {
  for (const id of ["frames-received", "frames-shown", "frames-dropped", "stalls", "turns", "interrupts"]) {
    setText(id, 0);
  }
  setText("stretch", "–");
  setText("latency", "–");
  setText("realtime-factor", "–");
  setText("rebuffer", REBUFFER_FRAMES);
  setText("playback", "–");
  setText("webrtc-state", "–");
  showError("");
}

async function startSession() {
  if (session) session.abort();
  resetStats();
  setText("status", "connecting");
  const s = new Session($("avatar").value, controls());
  session = s;
  updateButtons();
  try {
    await s.open();
  } catch (err) {
    if (!$("error").textContent) showError(err.message || String(err));
    return null;
  }
  return s;
}

$("speak").addEventListener("click", async () => {
  const pcm = filePcm;
  if ($("conversation").checked) {
    // One more turn of the conversation, which starts with the first.
    const live = session && !session.closed && session.conversation;
    const s = live ? session : await startSession();
    if (!s) return;
    setText("frames-expected", "–"); // the timeline's length is known at the end
    updateButtons();
    await s.speakTurn(pcm);
    return;
  }
  setText("frames-expected", Math.ceil(pcm.length / SAMPLES_PER_FRAME));
  const s = await startSession();
  if (!s) return;
  s.player.expectedFrames = Math.ceil(pcm.length / SAMPLES_PER_FRAME);
  for (let i = 0; i < pcm.length; i += CHUNK) {
    if (!(await s.sendAudio(pcm.subarray(i, i + CHUNK)))) return;
  }
  s.end();
  updateButtons();
});

// ------------------------------------------------------------------ microphone

class Resampler {
  // Streaming linear interpolation, for browsers that ignore a 16 kHz context rate.
  constructor(from, to) {
    this.step = from / to;
    this.t = 0; // next output position, in input samples from the current block's start
    this.last = 0; // the previous block's last sample (position -1)
  }

  push(x) {
    if (this.step === 1) return x;
    const out = [];
    while (Math.floor(this.t) + 1 < x.length) {
      const i = Math.floor(this.t);
      const a = i < 0 ? this.last : x[i];
      const frac = this.t - i;
      out.push(a + (x[i + 1] - a) * frac);
      this.t += this.step;
    }
    this.t -= x.length;
    this.last = x[x.length - 1];
    return Float32Array.from(out);
  }
}

$("mic").addEventListener("click", async () => {
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
  } catch (err) {
    showError(`microphone: ${err.message || err} (pages need https or localhost for it)`);
    return;
  }
  const s = await startSession();
  if (!s) { media.getTracks().forEach((t) => t.stop()); return; }
  let capture;
  try {
    capture = new AudioContext({ sampleRate: RATE });
  } catch (err) {
    capture = new AudioContext();
  }
  await capture.audioWorklet.addModule("/static/pcm-worklet.js");
  const input = capture.createMediaStreamSource(media);
  const node = new AudioWorkletNode(capture, "pcm-capture");
  const mute = capture.createGain();
  mute.gain.value = 0; // keeps the graph pulled without echoing the microphone
  input.connect(node).connect(mute).connect(capture.destination);
  const resampler = new Resampler(capture.sampleRate, RATE);
  let blocks = [];
  let buffered = 0;
  const flush = () => {
    if (!buffered) return;
    const chunk = new Float32Array(buffered);
    let at = 0;
    for (const b of blocks) { chunk.set(b, at); at += b.length; }
    blocks = [];
    buffered = 0;
    s.sendAudio(chunk);
  };
  node.port.onmessage = (event) => {
    const pcm = resampler.push(event.data);
    blocks.push(pcm);
    buffered += pcm.length;
    if (buffered >= CHUNK) flush();
  };
  stopCapture = () => {
    stopCapture = null;
    node.port.onmessage = null;
    flush();
    media.getTracks().forEach((t) => t.stop());
    capture.close();
    s.end();
    updateButtons();
  };
  s.onClose = () => { if (stopCapture) stopCapture(); };
  setText("frames-expected", "–");
  updateButtons();
});

$("interrupt").addEventListener("click", () => { if (session) session.interrupt(); });
$("end").addEventListener("click", () => { if (session) session.end(); updateButtons(); });
$("conversation").addEventListener("change", () => updateButtons());

$("stop").addEventListener("click", () => {
  if (stopCapture) stopCapture();
  else if (session) session.abort();
  updateButtons();
});

function updateButtons() {
  const live = Boolean(session && !session.closed);
  const talking = live && session.conversation && !session.ending; // takes more turns
  $("speak").disabled = !filePcm || !$("avatar").value || (live && !talking);
  $("mic").disabled = !$("avatar").value || live || $("conversation").checked;
  $("stop").disabled = !live;
  $("conversation").disabled = live;
  $("interrupt").disabled = !talking;
  $("end").disabled = !talking;
}

checkAccess()
  .then((ok) => (ok ? refreshAvatars() : showError("enter the server's token")))
  .catch((err) => showError(`cannot list avatars: ${err.message || err}`));
