-- Users, talk groups and their members, for MySQL 8 / MariaDB 10.6 and newer,
-- with demo data: one care team of doctors and patients.
-- Apply with `python server.py initdb`; every statement is idempotent.
-- Times are milliseconds since the Unix epoch (UTC).

-- tokens_valid_after: tokens issued before this time were revoked by a
-- logout. wechat_unreachable is set when the user unfollowed the account.
CREATE TABLE IF NOT EXISTS talk_user (
  id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  name VARCHAR(100) NOT NULL,
  role VARCHAR(16) NOT NULL,
  avatar VARCHAR(1024) NULL,
  getui_client_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  wechat_open_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
  wechat_unreachable TINYINT NOT NULL DEFAULT 0,
  tokens_valid_after BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS talk_group (
  id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  name VARCHAR(100) NOT NULL,
  type INT NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS talk_group_member (
  group_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  user_id VARCHAR(64) COLLATE utf8mb4_bin NOT NULL,
  joined_at BIGINT NOT NULL,
  PRIMARY KEY (group_id, user_id),
  KEY idx_talk_group_member_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Demo data: a family-doctor care team. Existing rows are left alone.
INSERT IGNORE INTO talk_user (id, name, role, created_at, updated_at) VALUES
  ('platform', '家庭医生平台', 'system', 1764806400000, 1764806400000),
  ('doc-demo-1', '王医生', 'doctor', 1764806400000, 1764806400000),
  ('doc-demo-2', '刘护士', 'doctor', 1764806400000, 1764806400000),
  ('pat-demo-1', '陈阿姨', 'patient', 1764806400000, 1764806400000),
  ('pat-demo-2', '赵先生', 'patient', 1764806400000, 1764806400000);

INSERT IGNORE INTO talk_group (id, name, type, created_at) VALUES
  ('team-demo', '示范签约团队', 1, 1764806400000);

INSERT IGNORE INTO talk_group_member (group_id, user_id, joined_at) VALUES
  ('team-demo', 'doc-demo-1', 1764806400000),
  ('team-demo', 'doc-demo-2', 1764806400000),
  ('team-demo', 'pat-demo-1', 1764806400000),
  ('team-demo', 'pat-demo-2', 1764806400000);

-- Every member has a statistic row from the moment it joins, so a group
-- send updates all counters of the group with one UPDATE.
INSERT IGNORE INTO msg_statistic (user_id, channel, peer_id, group_id)
SELECT user_id, 'group', '', group_id FROM talk_group_member
WHERE group_id = 'team-demo';
