/*
 * Patient chat page built on IMClient only.
 *
 * Every piece of message data reaches the DOM through textContent or a checked
 * http(s) URL attribute, never through innerHTML, so markup in a message is shown
 * as text and never runs.
 */
(function () {
  'use strict';

  const TOKEN_STORAGE_KEY = 'imchat.token';
  const PAGE_SIZE = 30;
  const MAX_TEXT_CODE_POINTS = 4000;
  const REFRESH_DELAY_MS = 300;
  const TYPING_SHOWN_MS = 4000;
  const PREVIEW_LABELS = { 2: '[Image]', 3: '[Voice]', 4: '[Link]', 5: '[File]' };

  const byId = (id) => document.getElementById(id);
  const ui = {
    banner: byId('banner'),
    loginForm: byId('login-form'),
    tokenInput: byId('token-input'),
    app: byId('app'),
    totalUnread: byId('total-unread'),
    conversationList: byId('conversation-list'),
    noConversations: byId('no-conversations'),
    moreConversations: byId('more-conversations'),
    backButton: byId('back-button'),
    title: byId('conversation-title'),
    typingIndicator: byId('typing-indicator'),
    noConversation: byId('no-conversation'),
    scroller: byId('message-scroller'),
    olderButton: byId('older-button'),
    messageList: byId('message-list'),
    composer: byId('composer'),
    input: byId('message-input'),
    composerError: byId('composer-error'),
  };

  let client = null;
  // Conversations from `recent`, by conversationKey().
  const conversations = new Map();
  let conversationsCursor = null;
  let totalUnread = 0;
  let refreshTimer = null;
  let typingTimer = null;
  // The open conversation: {key, channel, peer, group, shownIds, oldestId, newestId, readUpToId, peerReadUpToId}.
  let current = null;
  const userNames = new Map();

  // ----- keys and labels -----

  function conversationKey(channel, peerOrGroup) {
    return channel === 'system' ? 'system' : channel + ':' + peerOrGroup;
  }

  function keyOfConversation(conversation) {
    return conversationKey(conversation.channel, conversation.peer || conversation.group);
  }

  function keyOfMessage(message) {
    if (message.channel === 'group') return conversationKey('group', message.group);
    if (message.channel === 'p2p') {
      return conversationKey('p2p', message.from === client.userId ? message.to : message.from);
    }
    return conversationKey('system');
  }

  function conversationTitle(conversation) {
    if (conversation.channel === 'system') return 'System notices';
    if (conversation.channel === 'group') return conversation.groupName || conversation.group;
    return userNames.get(conversation.peer) || conversation.peerName || conversation.peer;
  }

  function previewText(message) {
    if (!message) return '';
    if (message.recalled) return 'Message recalled';
    if (message.title) return message.title;
    return PREVIEW_LABELS[message.contentType] || message.content || '';
  }

  /** Returns the URL if it is an absolute http(s) URL, else null. */
  function httpUrl(text) {
    try {
      const url = new URL(text);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  function fileNameOf(url) {
    const lastSegment = new URL(url).pathname.split('/').pop();
    try {
      return decodeURIComponent(lastSegment) || url;
    } catch (_) {
      return lastSegment || url;
    }
  }

  function formatTime(timestamp) {
    if (!timestamp) return '';
    const date = new Date(timestamp);
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
      ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : date.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ----- connection banner -----

  function showState(event) {
    ui.banner.dataset.state = event.state;
    if (event.state === 'open') {
      ui.banner.hidden = true;
      return;
    }
    let text = 'Connecting…';
    if (event.state === 'offline') {
      text = 'Offline. Reconnecting in ' + Math.ceil((event.retryInMs || 0) / 1000) + ' s…';
    } else if (event.state === 'unauthorized') {
      text = 'Your session has expired. Enter a new access token.';
    } else if (event.state === 'closed') {
      text = 'Disconnected.';
    }
    ui.banner.textContent = text;
    ui.banner.hidden = false;
  }

  // ----- conversation list -----

  function setTotalUnread(count) {
    totalUnread = Math.max(0, count || 0);
    ui.totalUnread.textContent = String(totalUnread);
    ui.totalUnread.hidden = totalUnread === 0;
    document.title = totalUnread ? '(' + totalUnread + ') Chat' : 'Chat';
  }

  function renderConversations() {
    const sorted = Array.from(conversations.values()).sort(
      (a, b) => ((b.lastMessage && b.lastMessage.timestamp) || 0) - ((a.lastMessage && a.lastMessage.timestamp) || 0)
    );
    const items = sorted.map(renderConversationItem);
    ui.conversationList.replaceChildren(...items);
    ui.noConversations.hidden = items.length > 0;
  }

  function renderConversationItem(conversation) {
    const key = keyOfConversation(conversation);
    const item = element('li', 'conversation-item');
    item.dataset.testid = 'conversation-item';
    item.dataset.key = key;
    item.tabIndex = 0;
    item.setAttribute('role', 'button');
    if (current && current.key === key) item.classList.add('active');

    const name = element('span', 'conversation-name', conversationTitle(conversation));
    name.dataset.testid = 'conversation-name';
    const time = element('span', 'conversation-time', formatTime(conversation.lastMessage && conversation.lastMessage.timestamp));
    const preview = element('span', 'conversation-preview', previewText(conversation.lastMessage));
    preview.dataset.testid = 'conversation-preview';
    const badge = element('span', 'badge', String(conversation.unread || 0));
    badge.dataset.testid = 'unread-badge';
    badge.hidden = !conversation.unread;
    item.append(name, time, preview, badge);

    const open = () => openConversation(conversation);
    item.addEventListener('click', open);
    item.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        open();
      }
    });
    if (conversation.channel === 'p2p') loadUserName(conversation.peer);
    return item;
  }

  function loadUserName(userId) {
    if (userNames.has(userId)) return;
    userNames.set(userId, null);
    client.user(userId).then(
      (user) => {
        if (!user || !user.name) return;
        userNames.set(userId, user.name);
        renderConversations();
        if (current && current.peer === userId) ui.title.textContent = user.name;
      },
      () => {
        // Without a profile the page shows the user id, which is good enough.
      }
    );
  }

  async function loadConversations(append) {
    const options = { limit: 100 };
    if (append && conversationsCursor) options.before = conversationsCursor;
    let page;
    try {
      page = await client.recent(options);
    } catch (error) {
      handleRestError('Loading conversations failed', error);
      return;
    }
    if (!append) conversations.clear();
    for (const conversation of page.conversations) {
      conversations.set(keyOfConversation(conversation), conversation);
      // The recent list names the peer, so no profile lookup is needed.
      if (conversation.peerName) userNames.set(conversation.peer, conversation.peerName);
    }
    const last = page.conversations[page.conversations.length - 1];
    conversationsCursor = last && last.lastMessage ? last.lastMessage.timestamp : null;
    ui.moreConversations.hidden = !page.hasMore;
    setTotalUnread(page.totalUnread);
    renderConversations();
  }

  /** Reloads the list shortly after a burst of events, so that unread counts come from the server. */
  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => loadConversations(false), REFRESH_DELAY_MS);
  }

  // ----- one conversation -----

  function targetOf(conversation) {
    if (conversation.channel === 'p2p') return { peer: conversation.peer };
    if (conversation.channel === 'group') return { group: conversation.group };
    return {};
  }

  async function openConversation(conversation) {
    const key = keyOfConversation(conversation);
    current = {
      key: key,
      channel: conversation.channel,
      peer: conversation.peer,
      group: conversation.group,
      shownIds: new Set(),
      oldestId: null,
      newestId: 0,
      readUpToId: 0,
      peerReadUpToId: conversation.peerReadUpToId || 0,
    };
    document.body.dataset.view = 'conversation';
    ui.title.textContent = conversationTitle(conversation);
    ui.noConversation.hidden = true;
    ui.messageList.replaceChildren();
    ui.olderButton.hidden = true;
    ui.typingIndicator.hidden = true;
    ui.composerError.hidden = true;
    // System notices are one-way.
    ui.composer.hidden = conversation.channel === 'system';
    renderConversations();

    const opened = current;
    let page;
    try {
      page = await client.history(opened.channel, Object.assign({ limit: PAGE_SIZE }, targetOf(opened)));
    } catch (error) {
      handleRestError('Loading messages failed', error);
      return;
    }
    if (current !== opened) return;
    for (const message of page.messages) appendMessage(message);
    ui.olderButton.hidden = !page.hasMore;
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    markCurrentRead();
  }

  async function loadOlderMessages() {
    const opened = current;
    if (!opened || opened.oldestId === null) return;
    ui.olderButton.disabled = true;
    let page;
    try {
      const options = Object.assign({ limit: PAGE_SIZE, beforeId: opened.oldestId }, targetOf(opened));
      page = await client.history(opened.channel, options);
    } catch (error) {
      handleRestError('Loading older messages failed', error);
      return;
    } finally {
      ui.olderButton.disabled = false;
    }
    if (current !== opened) return;
    // Keep the message that was at the top in place while older ones are inserted above it.
    const heightBefore = ui.scroller.scrollHeight;
    for (const message of page.messages) appendMessage(message);
    ui.scroller.scrollTop += ui.scroller.scrollHeight - heightBefore;
    ui.olderButton.hidden = !page.hasMore;
  }

  /** Inserts a message in id order; history pages and live messages can arrive in any order. */
  function appendMessage(message) {
    if (current.shownIds.has(message.id)) return;
    current.shownIds.add(message.id);
    let next = null;
    for (const item of ui.messageList.children) {
      // Items without an id are sends still waiting for confirmation, which stay last.
      if (!item.dataset.id || Number(item.dataset.id) > message.id) {
        next = item;
        break;
      }
    }
    ui.messageList.insertBefore(renderMessage(message), next);
    current.oldestId = current.oldestId === null ? message.id : Math.min(current.oldestId, message.id);
    current.newestId = Math.max(current.newestId, message.id);
  }

  function markCurrentRead() {
    if (!current || document.visibilityState !== 'visible') return;
    if (current.newestId <= current.readUpToId) return;
    current.readUpToId = current.newestId;
    client.read(current.channel, Object.assign({ upToId: current.newestId }, targetOf(current)));
    // Show the badge cleared now; the server's `unread` event brings the exact counts.
    const conversation = conversations.get(current.key);
    if (conversation && conversation.unread) {
      setTotalUnread(totalUnread - conversation.unread);
      conversation.unread = 0;
      renderConversations();
    }
  }

  // ----- message rendering (text only, never markup) -----

  function renderMessage(message) {
    const mine = message.from === client.userId;
    const item = element('li', 'message-item ' + (mine ? 'mine' : 'theirs'));
    item.dataset.testid = 'message-item';
    if (message.id) item.dataset.id = String(message.id);
    item.dataset.channel = message.channel || '';
    if (mine && message.id && message.id <= (current ? current.peerReadUpToId : 0)) item.classList.add('read');

    let sender = userNames.get(message.from) || message.from;
    if (mine) sender = 'Me';
    if (message.channel === 'system') sender = 'System';
    item.append(element('div', 'message-meta', sender + ' · ' + formatTime(message.timestamp)));
    item.append(renderMessageBody(message));
    return item;
  }

  function renderMessageBody(message) {
    const body = element('div', 'message-body');
    body.dataset.testid = 'message-body';
    if (message.recalled) {
      body.classList.add('recalled');
      body.textContent = 'Message recalled';
      return body;
    }
    if (message.title) body.append(element('strong', 'message-title', message.title));
    if (message.summary) body.append(element('p', 'message-summary', message.summary));

    const content = message.content || '';
    const url = message.contentType === 1 ? null : httpUrl(content);
    if (message.contentType === 2 && url) {
      const image = element('img', 'message-image');
      image.src = url;
      image.alt = 'Image';
      image.loading = 'lazy';
      body.append(image);
    } else if (message.contentType === 3 && url) {
      const audio = element('audio', 'message-audio');
      audio.controls = true;
      audio.preload = 'none';
      audio.src = url;
      body.append(audio);
    } else if ((message.contentType === 4 || message.contentType === 5) && url) {
      const link = element('a', 'message-link', message.contentType === 5 ? fileNameOf(url) : url);
      link.href = url;
      link.target = '_blank';
      link.rel = 'noopener';
      body.append(link);
    } else {
      // Text, and any URL that is not http(s), are shown as plain text.
      body.append(element('p', 'message-text', content));
    }
    return body;
  }

  // ----- sending -----

  async function sendCurrentInput() {
    const text = ui.input.value;
    if (!current || current.channel === 'system' || !text.trim()) return;
    if (Array.from(text).length > MAX_TEXT_CODE_POINTS) {
      showComposerError('A message can have at most ' + MAX_TEXT_CODE_POINTS + ' characters.');
      return;
    }
    ui.composerError.hidden = true;
    ui.input.value = '';

    const opened = current;
    const draft = Object.assign({ channel: opened.channel, contentType: 1, content: text },
      opened.channel === 'p2p' ? { to: opened.peer } : { group: opened.group });
    const placeholder = renderMessage({
      channel: opened.channel, from: client.userId, contentType: 1, content: text, timestamp: Date.now(),
    });
    placeholder.dataset.status = 'sending';
    ui.messageList.append(placeholder);
    ui.scroller.scrollTop = ui.scroller.scrollHeight;

    try {
      const message = await client.send(draft);
      placeholder.dataset.status = 'sent';
      if (current === opened && !opened.shownIds.has(message.id)) {
        opened.shownIds.add(message.id);
        placeholder.dataset.id = String(message.id);
        opened.newestId = Math.max(opened.newestId, message.id);
        if (opened.oldestId === null) opened.oldestId = message.id;
      } else {
        placeholder.remove();
      }
      scheduleRefresh();
    } catch (error) {
      placeholder.dataset.status = 'failed';
      showComposerError('Sending failed: ' + error.message);
    }
  }

  function showComposerError(text) {
    ui.composerError.textContent = text;
    ui.composerError.hidden = false;
  }

  function handleRestError(context, error) {
    if (error.status === 401) {
      ui.loginForm.hidden = false;
      return;
    }
    console.warn(context, error);
  }

  // ----- events from the client -----

  function handleMessage(message) {
    if (current && keyOfMessage(message) === current.key) {
      const nearBottom = ui.scroller.scrollHeight - ui.scroller.scrollTop - ui.scroller.clientHeight < 80;
      appendMessage(message);
      if (nearBottom) ui.scroller.scrollTop = ui.scroller.scrollHeight;
      markCurrentRead();
    }
    scheduleRefresh();
  }

  function handleUnread(event) {
    setTotalUnread(event.totalUnread);
    const conversation = conversations.get(conversationKey(event.channel, event.peer || event.group));
    if (conversation) {
      conversation.unread = event.unread;
      renderConversations();
    }
  }

  function handleReceipt(event) {
    if (!current || current.channel !== 'p2p' || event.channel !== 'p2p' || event.from !== current.peer) return;
    current.peerReadUpToId = Math.max(current.peerReadUpToId, event.upToId);
    for (const item of ui.messageList.querySelectorAll('.message-item.mine[data-id]')) {
      if (Number(item.dataset.id) <= current.peerReadUpToId) item.classList.add('read');
    }
  }

  function handleRecalled(event) {
    for (const item of ui.messageList.querySelectorAll('.message-item[data-id]')) {
      if (Number(item.dataset.id) === event.id && item.dataset.channel === event.channel) {
        item.querySelector('.message-body').replaceWith(renderMessageBody({ recalled: true }));
      }
    }
    scheduleRefresh();
  }

  function handleTyping(event) {
    if (!current) return;
    const fromOpenConversation = event.group
      ? current.channel === 'group' && event.group === current.group
      : current.channel === 'p2p' && event.from === current.peer;
    if (!fromOpenConversation) return;
    ui.typingIndicator.hidden = false;
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => {
      ui.typingIndicator.hidden = true;
    }, TYPING_SHOWN_MS);
  }

  function handleState(event) {
    showState(event);
    if (event.state === 'open') {
      ui.loginForm.hidden = true;
      setTotalUnread(event.totalUnread);
      loadConversations(false);
    } else if (event.state === 'unauthorized') {
      ui.loginForm.hidden = false;
      ui.tokenInput.focus();
    }
  }

  // ----- start-up -----

  function start(token) {
    try {
      sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
    } catch (_) {
      // Without sessionStorage, the page shows the sign-in form again after a reload.
    }
    ui.loginForm.hidden = true;
    ui.app.hidden = false;
    if (client) {
      client.setToken(token);
      return;
    }
    client = new IMClient({ baseUrl: '', token: token });
    client.on('state', handleState);
    client.on('message', handleMessage);
    client.on('unread', handleUnread);
    client.on('receipt', handleReceipt);
    client.on('recalled', handleRecalled);
    client.on('typing', handleTyping);
    client.on('error', (event) => console.warn('IM server error', event.code, event.message));
    client.connect();
  }

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get('token');
    if (token) {
      // Drop the token from the address bar and the history.
      history.replaceState(null, '', location.pathname + location.search);
    }
    return token;
  }

  ui.loginForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    ui.tokenInput.value = '';
    if (token) start(token);
  });
  ui.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    sendCurrentInput();
  });
  ui.input.addEventListener('keydown', (event) => {
    // Enter sends and Shift+Enter adds a line. Enter that confirms an IME composition (Chinese input) does neither.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      sendCurrentInput();
    }
  });
  ui.input.addEventListener('input', () => {
    if (!current || current.channel === 'system') return;
    client.typing(current.channel === 'p2p' ? { to: current.peer } : { group: current.group });
  });
  ui.olderButton.addEventListener('click', loadOlderMessages);
  ui.moreConversations.addEventListener('click', () => loadConversations(true));
  ui.backButton.addEventListener('click', () => {
    document.body.dataset.view = 'list';
  });
  document.addEventListener('visibilitychange', markCurrentRead);

  let storedToken = null;
  try {
    storedToken = sessionStorage.getItem(TOKEN_STORAGE_KEY);
  } catch (_) {
    storedToken = null;
  }
  const initialToken = tokenFromFragment() || storedToken;
  if (initialToken) {
    start(initialToken);
  } else {
    ui.loginForm.hidden = false;
  }
})();
