// The web UI's own script (no build step): API errors placed next to their field, live progress while a request
// waits for a model, the Speak form (fetch to POST /v1/audio/speech), recording in the browser, and small helpers.
// htmx (static/vendor/htmx.min.js) does the rest: forms, partial swaps, polling.
(() => {
  "use strict";

  // ---- errors: the API answers {"error": {"message", "param", ...}}; the field whose data-params names `param`
  // shows the message, else the form's (or the region's) error box does.

  function errorOf(status, body) {
    if (body && body.error && body.error.message) return body.error;
    return { message: status ? `The server answered ${status}.` : "The server could not be reached.", param: null };
  }

  function fieldFor(form, param) {
    if (!form || !param) return null;
    const names = [param, param.split(".").pop()];
    const wrappers = [...form.querySelectorAll("[data-params]")].filter((wrapper) => {
      const listed = wrapper.dataset.params.split(/\s+/);
      return names.some((name) => listed.includes(name));
    });
    return wrappers.find((wrapper) => !wrapper.closest("[hidden]")) || null;
  }

  function clearErrors(scope) {
    if (!scope) return;
    scope.querySelectorAll(".field-error").forEach((slot) => { slot.hidden = true; slot.textContent = ""; });
    scope.querySelectorAll("[aria-invalid]").forEach((control) => control.removeAttribute("aria-invalid"));
    scope.querySelectorAll("[data-form-error]").forEach((box) => { box.hidden = true; box.textContent = ""; });
    const page = document.getElementById("page-error");
    if (page) { page.hidden = true; page.textContent = ""; }
    const region = scope.closest && scope.closest("[data-error-target]");
    const line = region && document.querySelector(region.dataset.errorTarget);
    if (line && line.classList.contains("status-line--bad")) { line.textContent = ""; line.classList.remove("status-line--bad"); }
  }

  // A page form's answer may list every problem (`errors`): each goes next to its field, and the focus to the first.
  function showError(elt, status, body) {
    const problems = body && Array.isArray(body.errors) && body.errors.length ? body.errors : [errorOf(status, body)];
    let focused = false;
    problems.forEach((problem) => {
      const control = placeError(elt, problem);
      if (control && !focused) {
        control.focus({ preventScroll: false });
        focused = true;
      }
    });
  }

  function placeError(elt, error) {
    const form = elt.closest("form");
    const wrapper = fieldFor(form, error.param);
    if (wrapper) {
      const slot = wrapper.querySelector(".field-error");
      const control = wrapper.querySelector("input:not([type=hidden]), select, textarea");
      slot.textContent = error.message;
      slot.hidden = false;
      if (control) control.setAttribute("aria-invalid", "true");
      return control;
    }
    const regionHost = elt.closest("[data-error-target]");
    const box = (form && form.querySelector("[data-form-error]"))
      || (regionHost && document.querySelector(regionHost.dataset.errorTarget))
      || document.getElementById("page-error");
    box.textContent = error.message;
    box.classList.add("status-line--bad");
    box.classList.remove("status-line--ok");
    box.hidden = false;
    return null;
  }

  async function readError(response) {
    try { return await response.json(); } catch { return null; }
  }

  // ---- progress: while a request is pending, a timer and what the model is doing (GET /models/<id>/progress:
  // loading with elapsed against its last load, waiting for a turn, generating).

  const running = new WeakMap();

  function startProgress(form, model) {
    const box = form.querySelector("[data-progress]");
    if (!box || !model) return () => {};
    const clock = box.querySelector("[data-elapsed]");
    const detail = box.querySelector("[data-progress-detail]");
    const started = performance.now();
    let stopped = false;
    let pending = false;
    let phase = "";
    box.hidden = false;
    detail.innerHTML = "";
    const tick = () => { clock.textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`; };
    const poll = async () => {
      if (stopped || pending) return;
      pending = true;
      try {
        const response = await fetch(`/models/${encodeURIComponent(model)}/progress`, { headers: { "HX-Request": "true" } });
        if (response.ok && !stopped) {
          detail.innerHTML = await response.text();
          const now = detail.querySelector("[data-phase]");
          if (now && now.dataset.phase !== phase) {
            phase = now.dataset.phase;
            announce(form, now.textContent.trim().replace(/\s+/g, " "));
          }
        }
      } catch { /* the request itself reports failures */ } finally { pending = false; }
    };
    tick();
    poll();
    const timers = [setInterval(tick, 100), setInterval(poll, 500)];
    return () => {
      stopped = true;
      timers.forEach(clearInterval);
      box.hidden = true;
    };
  }

  function announce(scope, text) {
    const region = scope.querySelector("[data-announce]") || document.querySelector("[data-announce]");
    if (region) region.textContent = text;
  }

  function progressModel(form) {
    if (form.dataset.progressModel) return form.dataset.progressModel;
    const source = form.dataset.progressFrom && document.querySelector(form.dataset.progressFrom);
    return source ? source.value : "";
  }

  // ---- htmx: clear old errors before a request, show progress while it runs, place errors after it fails.

  document.addEventListener("htmx:beforeRequest", (event) => {
    const elt = event.detail.elt;
    const form = elt.closest("form");
    clearErrors(form || elt.closest("[data-error-target]"));
    if (form && elt === form && (form.dataset.progressModel || form.dataset.progressFrom)) {
      running.set(form, startProgress(form, progressModel(form)));
      form.setAttribute("aria-busy", "true");
    }
  });

  // The htmx config (base.html) swaps nothing for 4xx and 5xx, and counts only 5xx as htmx errors (which htmx logs):
  // a refused form is an answer, not a failure. Either way the API's error goes next to its field here.
  document.addEventListener("htmx:afterRequest", (event) => {
    const elt = event.detail.elt;
    const xhr = event.detail.xhr;
    const stop = running.get(elt);
    if (stop) { stop(); running.delete(elt); elt.removeAttribute("aria-busy"); }
    if (!xhr || !xhr.status) return;
    if (xhr.status >= 400) {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      showError(elt, xhr.status, body);
      return;
    }
    if (elt.matches("form[data-reset-on-success]")) {
      elt.reset();
      elt.querySelectorAll("[data-record-preview]").forEach((audio) => { audio.hidden = true; audio.removeAttribute("src"); });
      elt.querySelectorAll("[data-record-status]").forEach((status) => { status.hidden = true; });
    }
  });

  document.addEventListener("htmx:sendError", (event) => showError(event.detail.elt, 0, null));

  // After a swap that took the focus away (a replaced form), or into a region marked data-focus-on-swap (a panel
  // opened by a button), move it to the new content's [data-autofocus].
  document.addEventListener("htmx:afterSettle", (event) => {
    const target = event.detail.target;
    const always = target && target.matches && target.matches("[data-focus-on-swap]");
    if (!always && document.activeElement && document.activeElement !== document.body) return;
    if (always && target.contains(document.activeElement)) return;
    const next = target && target.querySelector && target.querySelector("[data-autofocus]");
    if (next) next.focus();
  });

  // Status lines that say an action went well clear themselves after a while; errors stay until the next action.
  const STATUS_SECONDS = 6;
  function fadeStatus(line) {
    clearTimeout(line.statusTimer);
    line.statusTimer = setTimeout(() => {
      if (!line.classList.contains("status-line--ok")) return;
      line.textContent = "";
      line.classList.remove("status-line--ok");
    }, STATUS_SECONDS * 1000);
  }

  // ---- the Speak form: the same request as any API client. MP3 is asked for as a stream (stream_format "audio")
  // and played through MediaSource while it arrives; the other formats play once complete. Either way the whole
  // file ends up behind the download link. The result says when the first byte came and when sound began.

  const EXTENSIONS = { mp3: "mp3", wav: "wav", opus: "ogg", flac: "flac" };
  const STREAMED = { mp3: "audio/mpeg" };
  let speechUrls = [];

  function streamable(format) {
    const type = STREAMED[format];
    return Boolean(type && window.MediaSource && MediaSource.isTypeSupported(type));
  }

  async function speak(form) {
    if (form.getAttribute("aria-busy") === "true") return;
    const data = new FormData(form);
    const body = {
      model: data.get("model"),
      input: data.get("input") || "",
      response_format: data.get("response_format") || "mp3",
      speed: Number(data.get("speed") || 1),
    };
    if (data.get("voice")) body.voice = data.get("voice");
    const instructions = String(data.get("instructions") || "").trim();
    if (instructions) body.instructions = instructions;
    const streamed = streamable(body.response_format);
    if (streamed) body.stream_format = "audio";
    clearErrors(form);
    form.setAttribute("aria-busy", "true");
    form.classList.add("htmx-request");
    const stop = startProgress(form, body.model);
    const timing = { started: performance.now(), firstByte: null, firstSound: null, complete: null };
    try {
      const response = await fetch("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        showError(form, response.status, await readError(response));
        return;
      }
      const audio = resetPlayer();
      delete document.getElementById("speak-result").dataset.firstSoundMs;
      audio.addEventListener("timeupdate", function sounding() {
        if (audio.currentTime > 0) {
          timing.firstSound = performance.now();
          document.getElementById("speak-result").dataset.firstSoundMs = String(Math.round(timing.firstSound - timing.started));
          audio.removeEventListener("timeupdate", sounding);
        }
      });
      showPending(response.headers, body, streamed);
      const blob = streamed
        ? await playStream(response, audio, STREAMED[body.response_format], timing)
        : await playWhole(response, audio, timing);
      timing.complete = timing.complete || performance.now();
      showSpeech(blob, response.headers, timing, body, audio);
    } catch (error) {
      showError(form, 0, { error: { message: `The request failed: ${error.message}` } });
    } finally {
      stop();
      form.removeAttribute("aria-busy");
      form.classList.remove("htmx-request");
    }
  }

  function resetPlayer() {
    const audio = document.getElementById("speak-audio");
    audio.pause();
    speechUrls.forEach((url) => URL.revokeObjectURL(url));
    speechUrls = [];
    return audio;
  }

  function objectUrl(source) {
    const url = URL.createObjectURL(source);
    speechUrls.push(url);
    return url;
  }

  // Appends each chunk to a MediaSource buffer as it arrives and starts playing after the first one.
  async function playStream(response, audio, type, timing) {
    const source = new MediaSource();
    audio.src = objectUrl(source);
    await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
    const buffer = source.addSourceBuffer(type);
    buffer.mode = "sequence";
    const appended = (chunk) => new Promise((resolve, reject) => {
      const done = () => { buffer.removeEventListener("error", failed); resolve(); };
      const failed = () => { buffer.removeEventListener("updateend", done); reject(new Error("the browser could not play the stream")); };
      buffer.addEventListener("updateend", done, { once: true });
      buffer.addEventListener("error", failed, { once: true });
      buffer.appendBuffer(chunk);
    });
    const reader = response.body.getReader();
    const chunks = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (timing.firstByte === null) timing.firstByte = performance.now();
      chunks.push(value);
      await appended(value);
      if (chunks.length === 1) audio.play().catch(() => { /* the browser wants a gesture: the controls remain */ });
    }
    timing.complete = performance.now();
    if (source.readyState === "open") source.endOfStream();
    return new Blob(chunks, { type });
  }

  async function playWhole(response, audio, timing) {
    timing.firstByte = performance.now();
    const blob = await response.blob();
    timing.complete = performance.now();
    audio.src = objectUrl(blob);
    audio.play().catch(() => { /* the browser wants a gesture: the controls remain */ });
    return blob;
  }

  function showPending(headers, body, streamed) {
    const result = document.getElementById("speak-result");
    result.querySelector("[data-empty]").hidden = true;
    result.querySelector("[data-filled]").hidden = false;
    result.querySelector("#speak-download").removeAttribute("href");
    Object.entries({
      took: streamed ? "streaming…" : "receiving…",
      audio: "",
      cold: headers.get("X-Cold-Start") === "true" ? "cold start: loaded first" : "already loaded (warm)",
      served: [headers.get("X-Model"), headers.get("X-Voice")].filter(Boolean).join(" · "),
      sound: "",
    }).forEach(([key, text]) => { result.querySelector(`[data-fact="${key}"]`).textContent = text; });
  }

  function showSpeech(blob, headers, timing, body, audio) {
    const result = document.getElementById("speak-result");
    const download = document.getElementById("speak-download");
    download.href = objectUrl(blob);
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    download.download = `speech-${headers.get("X-Model") || body.model}-${stamp}.${EXTENSIONS[body.response_format] || "bin"}`;
    const seconds = (from, to) => (to - from) / 1000;
    const took = seconds(timing.started, timing.complete);
    const cold = headers.get("X-Cold-Start") === "true";
    const loadSeconds = Number(headers.get("X-Model-Load-Seconds") || 0);
    const audioSeconds = Number(headers.get("X-Audio-Seconds") || 0) || (Number.isFinite(audio.duration) ? audio.duration : 0);
    const sound = () => (timing.firstSound === null
      ? "press play"
      : `${seconds(timing.started, timing.firstSound).toFixed(2)} s (${seconds(timing.firstByte, timing.firstSound).toFixed(2)} s after the first byte)`);
    const facts = {
      took: `${took.toFixed(2)} s`,
      audio: `${audioSeconds.toFixed(2)} s, ${(blob.size / 1024).toFixed(0)} KiB ${body.response_format}${STREAMED[body.response_format] && body.stream_format ? ", streamed" : ""}`,
      cold: cold ? `cold start: loaded first, in ${loadSeconds.toFixed(2)} s` : "already loaded (warm)",
      served: [headers.get("X-Model"), headers.get("X-Voice")].filter(Boolean).join(" · "),
      sound: sound(),
    };
    Object.entries(facts).forEach(([key, text]) => { result.querySelector(`[data-fact="${key}"]`).textContent = text; });
    result.querySelector("[data-fact=cold]").classList.toggle("is-cold", cold);
    if (timing.firstSound === null && !audio.paused) {
      audio.addEventListener("timeupdate", function later() {
        if (timing.firstSound === null) return;
        result.querySelector("[data-fact=sound]").textContent = sound();
        audio.removeEventListener("timeupdate", later);
      });
    }
    Object.assign(result.dataset, {
      firstByteMs: String(Math.round(timing.firstByte - timing.started)),
      completeMs: String(Math.round(timing.complete - timing.started)),
    });
    announce(result, `Speech ready: ${audioSeconds.toFixed(1)} seconds of audio, made in ${took.toFixed(1)} seconds${cold ? " including the model load" : ""}.`);
  }

  // ---- recording: MediaRecorder, then decoded and written as a 16-bit WAV file into the form's file input.

  function encodeWav(samples, rate) {
    const buffer = new ArrayBuffer(44 + samples.length * 2);
    const view = new DataView(buffer);
    const text = (offset, value) => { for (let i = 0; i < value.length; i += 1) view.setUint8(offset + i, value.charCodeAt(i)); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
    text(36, "data"); view.setUint32(40, samples.length * 2, true);
    samples.forEach((sample, i) => {
      const clipped = Math.max(-1, Math.min(1, sample));
      view.setInt16(44 + i * 2, clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff, true);
    });
    return new Blob([buffer], { type: "audio/wav" });
  }

  async function toWav(blob) {
    const context = new AudioContext();
    try {
      const decoded = await context.decodeAudioData(await blob.arrayBuffer());
      const mono = new Float32Array(decoded.length);
      for (let channel = 0; channel < decoded.numberOfChannels; channel += 1) {
        decoded.getChannelData(channel).forEach((value, i) => { mono[i] += value / decoded.numberOfChannels; });
      }
      return { wav: encodeWav(mono, decoded.sampleRate), seconds: decoded.duration };
    } finally {
      context.close();
    }
  }

  function initRecorder(root) {
    const button = root.querySelector("[data-record]");
    const label = root.querySelector("[data-record-label]");
    const input = root.querySelector("input[type=file]");
    const status = root.querySelector("[data-record-status]");
    const preview = root.querySelector("[data-record-preview]");
    const say = (text) => { status.hidden = !text; status.textContent = text; };
    const previewFile = (file) => {
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    };
    input.addEventListener("change", (event) => {
      if (event.isTrusted && input.files.length) { say(""); previewFile(input.files[0]); }
    });
    if (!window.isSecureContext || !navigator.mediaDevices || !window.MediaRecorder) {
      button.disabled = true;
      say("Recording needs a secure page (https:// or localhost); choose a file instead.");
      return;
    }
    let recorder = null;
    let timer = null;
    const setRecording = (on) => {
      button.setAttribute("aria-pressed", on ? "true" : "false");
      button.classList.toggle("is-recording", on);
      label.textContent = on ? "Stop" : "Record";
    };
    button.addEventListener("click", async () => {
      if (recorder && recorder.state === "recording") { recorder.stop(); return; }
      let stream;
      try {
        stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      } catch (error) {
        say(`No microphone: ${error.message}`);
        return;
      }
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
      recorder.addEventListener("stop", async () => {
        clearInterval(timer);
        stream.getTracks().forEach((track) => track.stop());
        setRecording(false);
        say("Preparing the recording…");
        try {
          const { wav, seconds } = await toWav(new Blob(chunks, { type: recorder.mimeType }));
          const file = new File([wav], "recording.wav", { type: "audio/wav" });
          const transfer = new DataTransfer();
          transfer.items.add(file);
          input.files = transfer.files;
          previewFile(file);
          say(`Recorded ${seconds.toFixed(1)} s: it is sent as recording.wav.`);
        } catch (error) {
          say(`The recording could not be read: ${error.message}`);
        }
      });
      const started = performance.now();
      recorder.start();
      setRecording(true);
      say("Recording… 0.0 s: press Stop when done.");
      timer = setInterval(() => say(`Recording… ${((performance.now() - started) / 1000).toFixed(1)} s: press Stop when done.`), 200);
    });
  }

  // ---- small helpers for the forms

  function initModeSwitch(form) {
    const select = form.querySelector("[data-mode-select]");
    const update = () => form.querySelectorAll("[data-mode-panel]").forEach((panel) => {
      const on = panel.dataset.modePanel === select.value;
      panel.hidden = !on;
      panel.querySelectorAll("input, select, textarea, button").forEach((control) => { control.disabled = !on; });
    });
    select.addEventListener("change", update);
    update();
  }

  function initSourceChoice(form) {
    const radios = form.querySelectorAll("[data-source-choice] input[type=radio]");
    const update = () => {
      const chosen = [...radios].find((radio) => radio.checked);
      form.querySelectorAll("[data-source-panel]").forEach((panel) => {
        const on = chosen && panel.dataset.sourcePanel === chosen.value;
        panel.hidden = !on;
        panel.querySelectorAll("input, select, textarea, button").forEach((control) => { control.disabled = !on; });
      });
    };
    radios.forEach((radio) => radio.addEventListener("change", update));
    update();
  }

  function insertTag(button) {
    const area = document.querySelector(button.dataset.insertTag);
    const select = button.parentElement.querySelector("[data-tag-select]");
    if (!area || !select) return;
    const start = area.selectionStart ?? area.value.length;
    const end = area.selectionEnd ?? start;
    const before = area.value.slice(0, start);
    const after = area.value.slice(end);
    const left = before && !/\s$/.test(before) ? " " : "";
    const right = after && !/^\s/.test(after) ? " " : "";
    area.value = `${before}${left}${select.value}${right}${after}`;
    const caret = before.length + left.length + select.value.length + right.length;
    area.focus();
    area.setSelectionRange(caret, caret);
  }

  function init(root) {
    const scope = root.querySelectorAll ? root : document;
    const all = (selector) => [...(scope.matches && scope.matches(selector) ? [scope] : []), ...scope.querySelectorAll(selector)];
    all("form[data-speak]").forEach((form) => {
      form.addEventListener("submit", (event) => { event.preventDefault(); speak(form); });
      form.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.matches("textarea")) {
          event.preventDefault();
          form.requestSubmit();
        }
      });
    });
    all("input[type=range]").forEach((range) => {
      const output = range.parentElement.querySelector("output");
      const update = () => { if (output) output.textContent = `${Number(range.value).toFixed(2)}×`; };
      range.addEventListener("input", update);
      update();
    });
    all("[data-recorder]").forEach(initRecorder);
    all(".status-line--ok").forEach((line) => { if (line.textContent.trim()) fadeStatus(line); });
    all("[data-dismiss]").forEach((button) => button.addEventListener("click", () => {
      const region = document.querySelector(button.dataset.dismiss);
      if (region) region.replaceChildren();
    }));
    all("form:has([data-mode-select])").forEach(initModeSwitch);
    all("form:has([data-source-choice])").forEach(initSourceChoice);
    all("[data-insert-tag]").forEach((button) => button.addEventListener("click", () => insertTag(button)));
  }

  if (window.htmx) {
    window.htmx.onLoad(init);
  } else {
    document.addEventListener("DOMContentLoaded", () => init(document.body));
  }
})();
