-- Message tables of the IM server, for MySQL 8 / MariaDB 10.6 and newer.
-- Apply with `python server.py initdb`; every statement is idempotent.
-- Times are milliseconds since the Unix epoch (UTC). Id columns use
-- utf8mb4_bin, so ids compare byte for byte as they do on SQLite: under
-- utf8mb4_unicode_ci "doc-1" and "DOC-1 " would be the same user.

-- One lock row per channel. A send transaction locks its channel's row first
-- and takes the next ids from it, so ids of a channel commit in id order.
CREATE TABLE IF NOT EXISTS msg_sequence (
  channel VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  last_id BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (channel)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT IGNORE INTO msg_sequence (channel, last_id)
VALUES ('p2p', 0), ('group', 0), ('system', 0);

CREATE TABLE IF NOT EXISTS msg_system (
  id BIGINT NOT NULL,
  to_user VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  title VARCHAR(100) NOT NULL DEFAULT '',
  summary VARCHAR(200) NOT NULL DEFAULT '',
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_msg_system_to (to_user, id),
  UNIQUE KEY uq_msg_system_client (client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- conv_key is "<smaller id>|<larger id>" of the two users, so one index
-- serves the history pages of a conversation in both directions.
CREATE TABLE IF NOT EXISTS msg_p2p (
  id BIGINT NOT NULL,
  from_user VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  to_user VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  conv_key VARCHAR(129) COLLATE utf8mb4_bin NOT NULL,
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_msg_p2p_to (to_user, id),
  KEY idx_msg_p2p_from (from_user, id),
  KEY idx_msg_p2p_conv (conv_key, id),
  UNIQUE KEY uq_msg_p2p_client (from_user, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- at_users is a JSON array of user ids, or ["all"].
CREATE TABLE IF NOT EXISTS msg_group (
  id BIGINT NOT NULL,
  from_user VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  group_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  group_type INT NOT NULL,
  at_users TEXT NULL,
  content_type TINYINT NOT NULL,
  content TEXT NOT NULL,
  client_msg_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  recalled TINYINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_msg_group_group (group_id, id),
  UNIQUE KEY uq_msg_group_client (from_user, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per user and conversation. peer_id is set for p2p, group_id for
-- group, both are '' for the system conversation. read_upto_id is how far
-- the user has read; peer_read_upto_id how far the p2p peer has read.
CREATE TABLE IF NOT EXISTS msg_statistic (
  id BIGINT NOT NULL AUTO_INCREMENT,
  user_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  channel VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  peer_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  group_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  unread INT NOT NULL DEFAULT 0,
  last_msg_id BIGINT NOT NULL DEFAULT 0,
  last_msg_at BIGINT NOT NULL DEFAULT 0,
  read_upto_id BIGINT NOT NULL DEFAULT 0,
  peer_read_upto_id BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  UNIQUE KEY uq_msg_statistic_conv (user_id, channel, peer_id, group_id),
  KEY idx_msg_statistic_recent (user_id, last_msg_at),
  KEY idx_msg_statistic_group (group_id, channel)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The push outbox: one row per offline recipient and vendor (getui, wechat).
-- status: pending, sending, sent, failed, parked.
CREATE TABLE IF NOT EXISTS msg_push (
  id BIGINT NOT NULL AUTO_INCREMENT,
  user_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  vendor VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  channel VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  conversation VARCHAR(64) COLLATE utf8mb4_bin NOT NULL DEFAULT '',
  message_id BIGINT NOT NULL,
  payload TEXT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'pending',
  attempts INT NOT NULL DEFAULT 0,
  next_attempt_at BIGINT NOT NULL,
  claimed_by VARCHAR(64) COLLATE utf8mb4_bin NULL,
  claimed_until BIGINT NOT NULL DEFAULT 0,
  last_error VARCHAR(255) NULL,
  vendor_message_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  delivery_status VARCHAR(32) NULL,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_msg_push_due (status, next_attempt_at),
  KEY idx_msg_push_user (user_id, vendor, status),
  KEY idx_msg_push_vendor_msg (vendor, vendor_message_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Delayed messages. request is the validated send request as JSON.
-- status: waiting, sent, cancelled.
CREATE TABLE IF NOT EXISTS msg_schedule (
  id BIGINT NOT NULL AUTO_INCREMENT,
  channel VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  sender VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  request TEXT NOT NULL,
  send_at BIGINT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'waiting',
  claimed_by VARCHAR(64) COLLATE utf8mb4_bin NULL,
  claimed_until BIGINT NOT NULL DEFAULT 0,
  message_id BIGINT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (id),
  KEY idx_msg_schedule_due (status, send_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Vendor access tokens shared by every process of a deployment (one WeChat
-- access token for all of them). expires_at is in epoch seconds.
CREATE TABLE IF NOT EXISTS vendor_token (
  vendor VARCHAR(16) COLLATE utf8mb4_bin NOT NULL,
  token VARCHAR(1024) NOT NULL DEFAULT '',
  expires_at DOUBLE NOT NULL DEFAULT 0,
  updated_at BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (vendor)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT IGNORE INTO vendor_token (vendor) VALUES ('wechat'), ('getui');
