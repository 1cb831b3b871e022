-- SQLite twin of sql/im_schema.sql for the embedded `dev` database. Keep the
-- tables and columns identical to the MySQL file: tests/test_schema.py
-- compares the two.

CREATE TABLE IF NOT EXISTS msg_sequence (
  channel VARCHAR(16) NOT NULL PRIMARY KEY,
  last_id BIGINT NOT NULL DEFAULT 0
);

INSERT OR IGNORE INTO msg_sequence (channel, last_id)
VALUES ('p2p', 0), ('group', 0), ('system', 0);

CREATE TABLE IF NOT EXISTS msg_system (
  id BIGINT NOT NULL PRIMARY KEY,
  to_user VARCHAR(64) NOT NULL,
  title VARCHAR(100) NOT NULL DEFAULT '',
  summary VARCHAR(200) NOT NULL DEFAULT '',
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_msg_system_to ON msg_system (to_user, id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_msg_system_client
  ON msg_system (client_msg_id);

CREATE TABLE IF NOT EXISTS msg_p2p (
  id BIGINT NOT NULL PRIMARY KEY,
  from_user VARCHAR(64) NOT NULL,
  to_user VARCHAR(64) NOT NULL,
  conv_key VARCHAR(129) NOT NULL,
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_msg_p2p_to ON msg_p2p (to_user, id);
CREATE INDEX IF NOT EXISTS idx_msg_p2p_from ON msg_p2p (from_user, id);
CREATE INDEX IF NOT EXISTS idx_msg_p2p_conv ON msg_p2p (conv_key, id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_msg_p2p_client
  ON msg_p2p (from_user, client_msg_id);

CREATE TABLE IF NOT EXISTS msg_group (
  id BIGINT NOT NULL PRIMARY KEY,
  from_user VARCHAR(64) NOT NULL,
  group_id VARCHAR(64) NOT NULL,
  group_type INT NOT NULL,
  at_users TEXT NULL,
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_msg_group_group ON msg_group (group_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS uq_msg_group_client
  ON msg_group (from_user, client_msg_id);

CREATE TABLE IF NOT EXISTS msg_statistic (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id VARCHAR(64) NOT NULL,
  channel VARCHAR(16) NOT NULL,
  peer_id VARCHAR(64) NOT NULL DEFAULT '',
  group_id VARCHAR(64) NOT NULL DEFAULT '',
  unread INT NOT NULL DEFAULT 0,
  last_msg_id BIGINT NOT NULL DEFAULT 0,
  last_msg_at BIGINT NOT NULL DEFAULT 0,
  read_upto_id BIGINT NOT NULL DEFAULT 0,
  peer_read_upto_id BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_msg_statistic_conv
  ON msg_statistic (user_id, channel, peer_id, group_id);
CREATE INDEX IF NOT EXISTS idx_msg_statistic_recent
  ON msg_statistic (user_id, last_msg_at);
CREATE INDEX IF NOT EXISTS idx_msg_statistic_group
  ON msg_statistic (group_id, channel);

CREATE TABLE IF NOT EXISTS msg_push (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id VARCHAR(64) NOT NULL,
  vendor VARCHAR(16) NOT NULL,
  channel VARCHAR(16) NOT NULL,
  conversation VARCHAR(64) NOT NULL DEFAULT '',
  message_id BIGINT NOT NULL,
  payload TEXT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at BIGINT NOT NULL,
  claimed_by VARCHAR(64) NULL,
  claimed_until BIGINT NOT NULL DEFAULT 0,
  last_error VARCHAR(255) NULL,
  vendor_message_id VARCHAR(64) NULL,
  delivery_status VARCHAR(32) NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_msg_push_due ON msg_push (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS idx_msg_push_user ON msg_push (user_id, vendor, status);
CREATE INDEX IF NOT EXISTS idx_msg_push_vendor_msg
  ON msg_push (vendor, vendor_message_id);

CREATE TABLE IF NOT EXISTS msg_schedule (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  channel VARCHAR(16) NOT NULL,
  sender VARCHAR(64) NOT NULL,
  request TEXT NOT NULL,
  send_at BIGINT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'waiting',
  claimed_by VARCHAR(64) NULL,
  claimed_until BIGINT NOT NULL DEFAULT 0,
  message_id BIGINT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_msg_schedule_due ON msg_schedule (status, send_at);

CREATE TABLE IF NOT EXISTS vendor_token (
  vendor VARCHAR(16) NOT NULL PRIMARY KEY,
  token VARCHAR(1024) NOT NULL DEFAULT '',
  expires_at DOUBLE NOT NULL DEFAULT 0,
  updated_at BIGINT NOT NULL DEFAULT 0
);

INSERT OR IGNORE INTO vendor_token (vendor) VALUES ('wechat'), ('getui');
