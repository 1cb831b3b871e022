/*
 * IMClient: a dependency-free browser client for the IM server.
 *
 * It wraps the WebSocket at /ws (login, sync, send, read, typing, ping) and the
 * REST reads under /api/v1. Load it with a <script> tag (global `IMClient`) or
 * with require() where `module.exports` exists. Usage and events: docs/sdk.md.
 */
(function (root, factory) {
  const IMClient = factory();
  const commonJs = typeof module === 'object' && module !== null && typeof module.exports === 'object';
  if (commonJs) module.exports = IMClient;
  // Pages get the global even where a bundler or a shim defines `module`.
  if (!commonJs || typeof document !== 'undefined') root.IMClient = IMClient;
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  const CHANNELS = ['p2p', 'group', 'system'];
  // REST paths name the channels pm, gm and sm.
  const REST_CHANNELS = { p2p: 'pm', group: 'gm', system: 'sm', pm: 'pm', gm: 'gm', sm: 'sm' };
  const WIRE_CHANNELS = { pm: 'p2p', gm: 'group', sm: 'system', p2p: 'p2p', group: 'group', system: 'system' };
  const CODES_BY_STATUS = {
    400: 'invalid_argument', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found',
    409: 'conflict', 413: 'payload_too_large', 415: 'unsupported_media_type',
    429: 'rate_limited', 500: 'internal', 503: 'unavailable',
  };
  const UNAUTHORIZED_CLOSE_CODE = 4001;
  const IDLE_CLOSE_CODE = 4000;
  const MAX_SYNC_LIMIT = 1000;
  const TYPING_INTERVAL_MS = 1000;

  const DEFAULTS = {
    baseUrl: '',
    wsUrl: '',
    pingIntervalMs: 25000,
    // The server replies to every ping with a pong, so silence this long means a dead socket.
    idleTimeoutMs: 60000,
    reconnectBaseMs: 1000,
    reconnectMaxMs: 30000,
    syncLimit: 200,
    storagePrefix: 'imclient.v1.',
  };

  /** Creates an Error carrying the API's error fields (`status`, `code`, `field`). */
  function apiError(message, fields) {
    const error = new Error(message);
    error.status = fields.status;
    error.code = fields.code;
    if (fields.field !== undefined) error.field = fields.field;
    if (fields.ref !== undefined) error.ref = fields.ref;
    if (fields.retryAfter !== undefined) error.retryAfter = fields.retryAfter;
    return error;
  }

  function invalidArgument(message, field) {
    return apiError(message, { status: 400, code: 'invalid_argument', field: field });
  }

  /** Reads the `sub` claim of a JWT without verifying it (the server verifies). */
  function userIdFromToken(token) {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const padded = payload + '='.repeat((4 - (payload.length % 4)) % 4);
      const json = decodeURIComponent(
        Array.from(atob(padded), (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join('')
      );
      const sub = JSON.parse(json).sub;
      return typeof sub === 'string' && sub ? sub : null;
    } catch (_) {
      return null;
    }
  }

  /** Returns a random RFC 4122 version 4 UUID. */
  function randomUuid() {
    const cryptoApi = globalThis.crypto;
    if (cryptoApi && typeof cryptoApi.randomUUID === 'function') {
      return cryptoApi.randomUUID();
    }
    // randomUUID exists only in secure contexts, but getRandomValues exists everywhere.
    const bytes = new Uint8Array(16);
    if (cryptoApi && typeof cryptoApi.getRandomValues === 'function') {
      cryptoApi.getRandomValues(bytes);
    } else {
      for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join('-');
  }

  function defaultStorage() {
    try {
      return globalThis.localStorage || null;
    } catch (_) {
      // Some browsers throw on access when storage is disabled.
      return null;
    }
  }

  function emptyCursor() {
    return { p2p: 0, group: 0, system: 0 };
  }

  function emptyIdSets() {
    return { p2p: new Set(), group: new Set(), system: new Set() };
  }

  function conversationFields(channel, target) {
    const fields = {};
    if (channel === 'p2p') fields.peer = target.peer;
    if (channel === 'group') fields.group = target.group;
    return fields;
  }

  function withoutType(frame) {
    const payload = Object.assign({}, frame);
    delete payload.type;
    return payload;
  }

  class IMClient {
    /**
     * Creates a client. Nothing connects until connect() is called.
     *
     * options: baseUrl (server origin, '' for the page's own), token (JWT) and userId.
     * userId defaults to the token's `sub`, and the `welcome` frame's userId replaces it.
     * Options for tuning and tests: wsUrl, pingIntervalMs, idleTimeoutMs,
     * reconnectBaseMs, reconnectMaxMs, syncLimit, storage (a localStorage-like object),
     * storagePrefix, WebSocket and fetch.
     */
    constructor(options) {
      if (!options || typeof options.token !== 'string' || !options.token) {
        throw new TypeError('IMClient: options.token is missing. Pass the JWT issued for this user.');
      }
      this.options = Object.assign({}, DEFAULTS, options);
      this.baseUrl = String(this.options.baseUrl || '').replace(/\/+$/, '');
      this.token = options.token;
      this.userId = options.userId || userIdFromToken(options.token);
      this.state = 'idle';

      this._WebSocket = options.WebSocket || globalThis.WebSocket;
      this._fetch = options.fetch || (globalThis.fetch ? globalThis.fetch.bind(globalThis) : null);
      this._storage = options.storage !== undefined ? options.storage : defaultStorage();
      this._syncLimit = Math.max(1, Math.min(MAX_SYNC_LIMIT, Math.floor(this.options.syncLimit) || 1));

      this._listeners = new Map();
      this._socket = null;
      this._welcomed = false;
      this._stopped = true;
      this._attempt = 0;
      this._retryTimer = null;
      this._pingTimer = null;
      this._idleTimer = null;
      this._lastTypingAt = 0;
      // Sends not yet confirmed by a `sent` or `error` frame, in send order.
      this._pendingSends = new Map();
      // The latest `read` per conversation made while the socket was not logged in.
      this._pendingReads = new Map();
      this._onBrowserOnline = () => {
        if (this.state === 'offline') this._reconnectNow();
      };

      this._loginToken = null;
      this._resumeOwner = null;
      this._loadResumePoint(this.userId);
    }

    // ----- events -----

    /** Adds a listener for an event and returns this client. */
    on(name, listener) {
      if (!this._listeners.has(name)) this._listeners.set(name, []);
      this._listeners.get(name).push(listener);
      return this;
    }

    /** Removes a listener added with on(). Without a listener, removes all listeners of the event. */
    off(name, listener) {
      const listeners = this._listeners.get(name);
      if (!listeners) return this;
      if (listener === undefined) {
        this._listeners.delete(name);
      } else {
        const index = listeners.indexOf(listener);
        if (index >= 0) listeners.splice(index, 1);
      }
      return this;
    }

    _emit(name, payload) {
      const listeners = (this._listeners.get(name) || []).slice();
      for (const listener of listeners) {
        try {
          listener(payload);
        } catch (error) {
          // A faulty listener must not stop the client or the other listeners.
          console.error('IMClient: a "' + name + '" listener threw', error);
        }
      }
    }

    _setState(state, details) {
      this.state = state;
      this._emit('state', Object.assign({ state: state }, details));
    }

    // ----- connection -----

    /** Opens the WebSocket and keeps it open, reconnecting with backoff, until close(). */
    connect() {
      if (!this._stopped) return this;
      if (!this._WebSocket) throw new Error('IMClient: no WebSocket implementation found. Pass options.WebSocket.');
      this._stopped = false;
      this._attempt = 0;
      if (typeof globalThis.addEventListener === 'function') {
        globalThis.addEventListener('online', this._onBrowserOnline);
      }
      this._openSocket();
      return this;
    }

    /** Closes the socket for good and rejects the sends still waiting for confirmation. */
    close() {
      this._stopped = true;
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      if (typeof globalThis.removeEventListener === 'function') {
        globalThis.removeEventListener('online', this._onBrowserOnline);
      }
      const socket = this._socket;
      this._detachSocket();
      if (socket) socket.close(1000, 'client closed');
      for (const [clientMsgId, pending] of this._pendingSends) {
        pending.reject(apiError('The client was closed before the server confirmed the message', {
          status: 0, code: 'closed', ref: clientMsgId,
        }));
      }
      this._pendingSends.clear();
      this._setState('closed');
    }

    /**
     * Replaces the token used for the next login and for REST calls. After a 4001
     * close, or while offline, it reconnects at once. The client never retries a
     * rejected token by itself.
     */
    setToken(token) {
      if (typeof token !== 'string' || !token) {
        throw new TypeError('IMClient.setToken: the token must be a non-empty string');
      }
      this.token = token;
      const tokenUserId = userIdFromToken(token);
      if (!this.options.userId && tokenUserId) this.userId = tokenUserId;
      if (!this._stopped && (this.state === 'unauthorized' || this.state === 'offline')) {
        this._reconnectNow();
      }
    }

    _socketUrl() {
      if (this.options.wsUrl) return this.options.wsUrl;
      let origin = this.baseUrl;
      if (!origin && globalThis.location) origin = globalThis.location.origin;
      // The token travels in the login frame, never in the URL, so it stays out of access logs.
      return origin.replace(/^http/i, 'ws') + '/ws';
    }

    _openSocket() {
      this._retryTimer = null;
      this._setState('connecting');
      let socket;
      try {
        socket = new this._WebSocket(this._socketUrl());
      } catch (error) {
        console.error('IMClient: cannot open the WebSocket', error);
        this._scheduleReconnect(0);
        return;
      }
      this._socket = socket;
      this._welcomed = false;
      socket.onopen = () => {
        if (socket !== this._socket) return;
        this._touch();
        this._loginToken = this.token;
        this._sendFrame({ type: 'login', token: this.token });
      };
      socket.onmessage = (event) => {
        if (socket === this._socket) this._handleFrameText(event.data);
      };
      socket.onclose = (event) => {
        if (socket === this._socket) this._handleClose(event.code, event.reason);
      };
      // Every error is followed by a close event, which does the handling.
      socket.onerror = () => {};
    }

    /** Forgets the current socket and its timers without closing it. */
    _detachSocket() {
      const socket = this._socket;
      if (socket) {
        socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      }
      this._socket = null;
      this._welcomed = false;
      clearInterval(this._pingTimer);
      clearTimeout(this._idleTimer);
      this._pingTimer = null;
      this._idleTimer = null;
      this._syncRequest = null;
      this._caughtUp = { p2p: false, group: false, system: false };
    }

    _handleClose(code, reason) {
      this._detachSocket();
      if (this._stopped) return;
      if (code === UNAUTHORIZED_CLOSE_CODE && this.token !== this._loginToken) {
        // setToken() was called while the old token was being rejected: try the new one.
        this._reconnectNow();
        return;
      }
      if (code === UNAUTHORIZED_CLOSE_CODE) {
        this._setState('unauthorized', { closeCode: code });
        this._emit('unauthorized', { code: code, reason: reason || '' });
        return;
      }
      this._scheduleReconnect(code);
    }

    /** Waits a random delay in [0, min(max, base * 2^attempt)) ("full jitter"), then reconnects. */
    _scheduleReconnect(closeCode) {
      const ceiling = Math.min(this.options.reconnectMaxMs, this.options.reconnectBaseMs * 2 ** this._attempt);
      const delay = Math.floor(Math.random() * ceiling);
      // The cap keeps 2^attempt finite, and 2^30 is far past any useful ceiling.
      this._attempt = Math.min(this._attempt + 1, 30);
      this._setState('offline', { retryInMs: delay, closeCode: closeCode });
      this._retryTimer = setTimeout(() => this._openSocket(), delay);
    }

    _reconnectNow() {
      clearTimeout(this._retryTimer);
      this._attempt = 0;
      const socket = this._socket;
      this._detachSocket();
      if (socket) socket.close(1000, 'reconnecting');
      this._openSocket();
    }

    /** Restarts the idle timer: a socket silent for idleTimeoutMs is dropped and replaced. */
    _touch() {
      clearTimeout(this._idleTimer);
      this._idleTimer = setTimeout(() => {
        const socket = this._socket;
        this._detachSocket();
        // A dead TCP connection can take minutes to report its close, so do not wait for it.
        if (socket) socket.close(IDLE_CLOSE_CODE, 'no frame from the server');
        if (!this._stopped) this._scheduleReconnect(IDLE_CLOSE_CODE);
      }, this.options.idleTimeoutMs);
    }

    _sendFrame(frame) {
      const socket = this._socket;
      if (!socket || socket.readyState !== 1) return false;
      socket.send(JSON.stringify(frame));
      return true;
    }

    // ----- incoming frames -----

    _handleFrameText(text) {
      this._touch();
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (_) {
        this._emit('error', { code: 'invalid_frame', message: 'The server sent a frame that is not JSON' });
        return;
      }
      if (!frame || typeof frame !== 'object') return;
      switch (frame.type) {
        case 'welcome':
          this._handleWelcome(frame);
          break;
        case 'message':
          this._handleMessage(frame.message);
          break;
        case 'sent':
          this._handleSent(frame);
          break;
        case 'synced':
          this._handleSynced(frame);
          break;
        case 'error':
          this._handleError(frame);
          break;
        case 'unread':
        case 'receipt':
        case 'recalled':
        case 'typing':
          this._emit(frame.type, withoutType(frame));
          break;
        default:
          // `pong` and frame types added by newer servers need no handling.
          break;
      }
    }

    _handleWelcome(frame) {
      this.userId = frame.userId || this.userId;
      if (this.userId !== this._resumeOwner) this._loadResumePoint(this.userId);
      this._welcomed = true;
      this._attempt = 0;
      clearInterval(this._pingTimer);
      this._pingTimer = setInterval(() => this._sendFrame({ type: 'ping' }), this.options.pingIntervalMs);
      this._setState('open', { userId: this.userId, totalUnread: frame.totalUnread });
      this._startSync();
      for (const pending of this._pendingSends.values()) {
        this._sendFrame(pending.frame);
      }
      for (const frameToSend of this._pendingReads.values()) {
        this._sendFrame(frameToSend);
      }
      this._pendingReads.clear();
    }

    _handleMessage(message) {
      if (!message || typeof message !== 'object') return;
      const channel = message.channel;
      const id = message.id;
      if (CHANNELS.indexOf(channel) < 0 || !Number.isInteger(id)) {
        this._emit('message', message);
        return;
      }
      this._noteSyncedId(channel, id);
      if (id > this._maxSeen[channel]) this._maxSeen[channel] = id;
      if (id <= this._resume[channel] || this._seen[channel].has(id)) {
        return;
      }
      this._seen[channel].add(id);
      if (this._caughtUp[channel]) this._advanceResumePoint(channel);
      this._emit('message', message);
    }

    _handleSent(frame) {
      const message = frame.message;
      if (message && CHANNELS.indexOf(message.channel) >= 0 && Number.isInteger(message.id)) {
        // Marked as seen so that a later sync does not report our own message again.
        // NOTE: a `sent` id does not move the resume point, which needs no promise
        // about the order of `sent` frames relative to incoming messages.
        if (message.id > this._resume[message.channel]) this._seen[message.channel].add(message.id);
      }
      const pending = this._pendingSends.get(frame.clientMsgId);
      if (pending) {
        this._pendingSends.delete(frame.clientMsgId);
        pending.resolve(message);
      }
      this._emit('sent', { clientMsgId: frame.clientMsgId, message: message });
    }

    _handleError(frame) {
      const details = { code: frame.code, message: frame.message };
      if (frame.ref !== undefined) details.ref = frame.ref;
      const pending = frame.ref !== undefined ? this._pendingSends.get(frame.ref) : undefined;
      if (pending) {
        this._pendingSends.delete(frame.ref);
        pending.reject(apiError(frame.message || 'The server rejected the message', {
          status: 0, code: frame.code, ref: frame.ref,
        }));
      }
      this._emit('error', details);
    }

    // ----- sync and the resume point -----
    //
    // The stored resume point of a channel is the largest id such that every
    // message up to it has reached this client. Live frames may arrive while a
    // sync replay is running, out of order with it, so the point moves only after
    // the channel's `synced` frame with hasMore:false, and after that with each
    // message of the channel until the socket closes.

    _storageKey(userId) {
      return this.options.storagePrefix + 'resume.' + userId;
    }

    _readStoredResumePoint(userId) {
      const cursor = emptyCursor();
      if (!this._storage || !userId) return cursor;
      try {
        const stored = JSON.parse(this._storage.getItem(this._storageKey(userId)) || '{}');
        for (const channel of CHANNELS) {
          if (Number.isInteger(stored[channel]) && stored[channel] > 0) cursor[channel] = stored[channel];
        }
      } catch (_) {
        // A damaged entry only means a fuller sync.
      }
      return cursor;
    }

    _loadResumePoint(userId) {
      this._resumeOwner = userId;
      this._resume = this._readStoredResumePoint(userId);
      this._maxSeen = Object.assign({}, this._resume);
      this._seen = emptyIdSets();
      this._caughtUp = { p2p: false, group: false, system: false };
      this._syncRequest = null;
    }

    _advanceResumePoint(channel) {
      if (this._maxSeen[channel] <= this._resume[channel]) return;
      const point = this._maxSeen[channel];
      this._resume[channel] = point;
      for (const id of this._seen[channel]) {
        if (id <= point) this._seen[channel].delete(id);
      }
      if (!this._storage || !this._resumeOwner) return;
      try {
        // Another tab of the same user may have stored a larger point; keep the larger one.
        const stored = this._readStoredResumePoint(this._resumeOwner);
        for (const name of CHANNELS) stored[name] = Math.max(stored[name], this._resume[name]);
        this._storage.setItem(this._storageKey(this._resumeOwner), JSON.stringify(stored));
      } catch (error) {
        console.warn('IMClient: cannot store the resume point', error);
      }
    }

    _startSync() {
      this._caughtUp = { p2p: false, group: false, system: false };
      this._maxSeen = Object.assign({}, this._resume);
      this._sendSync(Object.assign({}, this._resume));
    }

    _sendSync(after) {
      this._syncRequest = {
        after: after,
        waitingFor: new Set(CHANNELS),
        // Every id above `after` that arrived since the request, replayed or live.
        received: emptyIdSets(),
        nextAfter: {},
      };
      this._sendFrame({ type: 'sync', after: after, limit: this._syncLimit });
    }

    _noteSyncedId(channel, id) {
      const request = this._syncRequest;
      if (request && request.waitingFor.has(channel) && id > request.after[channel]) {
        request.received[channel].add(id);
      }
    }

    /**
     * Returns where the next sync of a channel starts after a batch with hasMore:true.
     *
     * The batch contains exactly `limit` messages: the smallest ids above `after`. A live
     * frame that arrived meanwhile is either one of them or has a larger id, because
     * it was committed later or lies past the batch. So the batch's last id is the
     * limit-th smallest id received, even with live frames mixed in.
     */
    _nextSyncStart(channel) {
      const request = this._syncRequest;
      const ids = Array.from(request.received[channel]).sort((a, b) => a - b);
      if (ids.length >= this._syncLimit) return ids[this._syncLimit - 1];
      // NOTE: a batch shorter than `limit` with hasMore:true breaks the API's rule.
      // Resuming after its largest id then skips messages if live frames were mixed in.
      if (ids.length > 0) return ids[ids.length - 1];
      return null;
    }

    _handleSynced(frame) {
      const request = this._syncRequest;
      const channel = frame.channel;
      if (!request || !request.waitingFor.has(channel)) return;
      if (frame.hasMore) {
        // lastId is where the batch ended; servers before it was added send none.
        const start = Number.isInteger(frame.lastId) ? frame.lastId : this._nextSyncStart(channel);
        if (start === null) {
          this._emit('error', {
            code: 'sync_stalled',
            message: 'The server reported more ' + channel + ' messages but sent none. Its resume point stays where it was.',
          });
        } else {
          request.nextAfter[channel] = start;
        }
      } else {
        this._caughtUp[channel] = true;
        this._advanceResumePoint(channel);
      }
      request.waitingFor.delete(channel);
      if (request.waitingFor.size > 0) return;

      this._syncRequest = null;
      const continuing = Object.keys(request.nextAfter);
      if (continuing.length === 0) {
        this._emit('synced', {});
        return;
      }
      // Channels already caught up restart from their resume point, which loses nothing.
      const after = Object.assign({}, this._resume, request.nextAfter);
      this._sendSync(after);
    }

    // ----- outgoing frames -----

    /**
     * Sends a p2p or group message over the WebSocket. Returns a Promise for the
     * stored message (from the `sent` frame); it rejects on an `error` frame whose
     * `ref` is this send's clientMsgId. An unconfirmed send is sent again with the
     * same clientMsgId after every reconnect, which the server deduplicates.
     */
    send(draft) {
      let frame;
      try {
        frame = this._buildSendFrame(draft || {});
      } catch (error) {
        return Promise.reject(error);
      }
      if (this._pendingSends.has(frame.clientMsgId)) {
        return Promise.reject(invalidArgument('A send with this clientMsgId is still waiting for confirmation', 'clientMsgId'));
      }
      return new Promise((resolve, reject) => {
        this._pendingSends.set(frame.clientMsgId, { frame: frame, resolve: resolve, reject: reject });
        if (this._welcomed) this._sendFrame(frame);
      });
    }

    _buildSendFrame(draft) {
      const channel = draft.channel;
      if (channel !== 'p2p' && channel !== 'group') {
        throw invalidArgument('channel must be "p2p" or "group", got ' + JSON.stringify(channel), 'channel');
      }
      const frame = { type: 'send', channel: channel };
      if (channel === 'p2p') {
        if (typeof draft.to !== 'string' || !draft.to) throw invalidArgument('A p2p message needs `to`', 'to');
        frame.to = draft.to;
      } else {
        if (typeof draft.group !== 'string' || !draft.group) throw invalidArgument('A group message needs `group`', 'group');
        frame.group = draft.group;
        if (draft.at !== undefined) frame.at = draft.at;
      }
      if (!Number.isInteger(draft.contentType) || draft.contentType < 1 || draft.contentType > 5) {
        throw invalidArgument('contentType must be an integer from 1 to 5', 'contentType');
      }
      if (typeof draft.content !== 'string' || !draft.content) {
        throw invalidArgument('content must be a non-empty string', 'content');
      }
      frame.contentType = draft.contentType;
      frame.content = draft.content;
      if (draft.clientMsgId !== undefined) {
        const valid = typeof draft.clientMsgId === 'string' && draft.clientMsgId !== '' && Array.from(draft.clientMsgId).length <= 64;
        if (!valid) throw invalidArgument('clientMsgId must be a string of 1 to 64 characters', 'clientMsgId');
      }
      frame.clientMsgId = draft.clientMsgId || randomUuid();
      return frame;
    }

    /**
     * Marks a conversation read up to `upToId` over the WebSocket. While the socket
     * is not logged in, the latest read per conversation waits for the next login.
     * The server replies with an `unread` event.
     */
    read(channel, target) {
      const options = target || {};
      const wireChannel = WIRE_CHANNELS[channel];
      if (!wireChannel) throw invalidArgument('Unknown channel ' + JSON.stringify(channel), 'channel');
      if (!Number.isInteger(options.upToId) || options.upToId < 1) {
        throw invalidArgument('upToId must be a positive integer', 'upToId');
      }
      const frame = Object.assign(
        { type: 'read', channel: wireChannel },
        conversationFields(wireChannel, options),
        { upToId: options.upToId }
      );
      if (this._welcomed && this._sendFrame(frame)) return true;
      const key = wireChannel + ':' + (frame.peer || frame.group || '');
      const queued = this._pendingReads.get(key);
      if (!queued || queued.upToId < frame.upToId) this._pendingReads.set(key, frame);
      return false;
    }

    /**
     * Tells a peer (`{to}`) or a group (`{group}`) that this user is typing.
     * Returns false when the frame was not sent: offline, or within a second of the
     * previous one (the server accepts at most one per second).
     */
    typing(target) {
      const options = target || {};
      const frame = { type: 'typing' };
      if (options.to) frame.to = options.to;
      else if (options.group) frame.group = options.group;
      else throw invalidArgument('typing needs `to` or `group`', 'to');
      const now = Date.now();
      if (!this._welcomed || now - this._lastTypingAt < TYPING_INTERVAL_MS) return false;
      if (!this._sendFrame(frame)) return false;
      this._lastTypingAt = now;
      return true;
    }

    // ----- REST -----

    async _request(method, path, query, body) {
      if (!this._fetch) throw new Error('IMClient: no fetch implementation found. Pass options.fetch.');
      const params = new URLSearchParams();
      for (const [name, value] of Object.entries(query || {})) {
        if (value !== undefined && value !== null) params.append(name, String(value));
      }
      const queryString = params.toString();
      const url = this.baseUrl + path + (queryString ? '?' + queryString : '');
      const headers = { Authorization: 'Bearer ' + this.token, Accept: 'application/json' };
      const init = { method: method, headers: headers };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }

      let response;
      try {
        response = await this._fetch(url, init);
      } catch (cause) {
        throw apiError(method + ' ' + path + ' failed: ' + ((cause && cause.message) || cause), {
          status: 0, code: 'network_error',
        });
      }
      let payload = null;
      if (response.status !== 204) {
        try {
          payload = await response.json();
        } catch (_) {
          payload = null;
        }
      }
      if (!response.ok) {
        const error = (payload && payload.error) || {};
        const retryAfter = response.headers && response.headers.get('Retry-After');
        throw apiError(error.message || method + ' ' + path + ' failed with HTTP ' + response.status, {
          status: response.status,
          code: error.code || CODES_BY_STATUS[response.status] || 'http_' + response.status,
          field: error.field,
          retryAfter: retryAfter ? Number(retryAfter) : undefined,
        });
      }
      return payload;
    }

    _requireUserId(options) {
      const userId = (options && options.userId) || this.userId;
      if (!userId) {
        throw invalidArgument('The user id is unknown: pass options.userId or a token with a `sub` claim', 'userId');
      }
      return userId;
    }

    /**
     * Fetches one page of a conversation's messages in ascending id order:
     * `{messages, hasMore}`. options: peer (p2p; omit for all peers), group (group),
     * beforeId or afterId, limit (1-100), userId (system tokens only).
     */
    async history(channel, options) {
      const opts = options || {};
      const restChannel = REST_CHANNELS[channel];
      if (!restChannel) throw invalidArgument('Unknown channel ' + JSON.stringify(channel), 'channel');
      const query = {
        user_id: this._requireUserId(opts),
        peer_id: restChannel === 'pm' ? opts.peer : undefined,
        group: restChannel === 'gm' ? opts.group : undefined,
        before_id: opts.beforeId,
        after_id: opts.afterId,
        limit: opts.limit,
      };
      return this._request('GET', '/api/v1/chats/' + restChannel, query);
    }

    /**
     * Fetches the user's conversations, newest first:
     * `{conversations, totalUnread, hasMore}`. options: limit (1-500), before (a
     * lastMessage.timestamp, to page back), userId.
     */
    async recent(options) {
      const opts = options || {};
      const query = { user_id: this._requireUserId(opts), limit: opts.limit, before: opts.before };
      return this._request('GET', '/api/v1/chats/recent', query);
    }

    /** Marks a conversation read over REST; resolves to `{unread}`. */
    async markRead(channel, options) {
      const opts = options || {};
      const wireChannel = WIRE_CHANNELS[channel];
      if (!wireChannel) throw invalidArgument('Unknown channel ' + JSON.stringify(channel), 'channel');
      const body = Object.assign(
        { userId: this._requireUserId(opts), channel: wireChannel },
        conversationFields(wireChannel, opts),
        { upToId: opts.upToId }
      );
      return this._request('POST', '/api/v1/chats/read', undefined, body);
    }

    /** Recalls a message; resolves to the recalled message (content removed). */
    async recall(channel, id) {
      const restChannel = REST_CHANNELS[channel];
      if (!restChannel) throw invalidArgument('Unknown channel ' + JSON.stringify(channel), 'channel');
      const payload = await this._request('DELETE', '/api/v1/chats/' + restChannel + '/' + encodeURIComponent(id));
      return payload && payload.message;
    }

    /** Fetches a user's profile: `{id, name, role, online, ...}`. */
    async user(id) {
      return this._request('GET', '/api/v1/users/' + encodeURIComponent(id));
    }
  }

  IMClient.CHANNELS = CHANNELS.slice();
  return IMClient;
});
