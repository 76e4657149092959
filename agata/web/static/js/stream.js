// One EventSource on ``/api/stream`` shared by every view. Views subscribe to kinds
// (task, metric, log, event, device, device_task, quarantine_cleared, …: the kinds of
// agata.protocol.notifications) and to ``resync``, sent after a reconnect so they
// reload what they may have missed.

import { call, markReachable, streamUrl } from "./api.js";
import { STREAM_KINDS } from "./protocol.js"; // written by the gateway

export const KINDS = STREAM_KINDS;

export class Stream {
  constructor(onStatus = () => {}) {
    this.onStatus = onStatus;
    this.listeners = new Map();
    this.source = null;
    this.opened = false;
    this.retryTimer = null;
    this.retryDelay = 1000;
    this.status = "off";
  }

  setStatus(status) {
    this.status = status;
    this.onStatus(status);
  }

  start() {
    this.stop();
    const source = new EventSource(streamUrl());
    this.source = source;
    this.setStatus("connecting");
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        this.emit(kind, data);
      });
    }
    source.onopen = () => {
      markReachable();
      this.retryDelay = 1000;
      this.setStatus("live");
      if (this.opened) this.emit("resync", {});
      this.opened = true;
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. the gateway answered 401 or was restarted):
        // ask whether the token still works (a 401 signs out), then try again.
        this.setStatus("down");
        this.scheduleRetry();
      } else {
        this.setStatus("connecting");
      }
    };
  }

  scheduleRetry() {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(async () => {
      try {
        await call("rpc_exec_get_overview", {});
      } catch (error) {
        if (error.status === 401) return; // signed out by the API layer
      }
      if (this.source) this.start();
    }, this.retryDelay);
    this.retryDelay = Math.min(this.retryDelay * 2, 15000);
  }

  stop() {
    clearTimeout(this.retryTimer);
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this.setStatus("off");
  }

  /** Subscribe ``fn(data)`` to ``kind``; returns the unsubscribe function. */
  on(kind, fn) {
    if (!this.listeners.has(kind)) this.listeners.set(kind, new Set());
    this.listeners.get(kind).add(fn);
    return () => this.listeners.get(kind)?.delete(fn);
  }

  emit(kind, data) {
    for (const fn of [...(this.listeners.get(kind) || [])]) {
      try {
        fn(data);
      } catch (error) {
        console.error(`stream listener for ${kind} failed`, error);
      }
    }
  }
}
