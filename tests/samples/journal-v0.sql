-- The journal tables of a recflow SQLite file before schema version 1 (recflow
-- up to commit bee76d7), as sqlite3's iterdump wrote them: three events, a step
-- done with its next one queued, a step failed after a retry, two steps queued.
-- tests/test_journal.py upgrades it.
CREATE TABLE journal_events (
        id text primary key,
        account_sid text not null,
        recording_sid text not null,
        status text not null,
        received_at real not null,
        data text not null,
        rules text not null);
INSERT INTO "journal_events" VALUES('ddcbe8be8238c5681b8eff610c554a93','AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f','RE1','completed',1799999941.0,'{"account_sid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "call_sid": "CA1", "recording_sid": "RE1", "recording_url": "http://127.0.0.1:9/2010-04-01/Accounts/AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f/Recordings/RE1", "status": "completed", "duration": 7, "channels": null, "source": null, "start_time": null, "track": null, "conference_sid": null, "error_code": null, "params": {"AccountSid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "RecordingSid": "RE1"}}','["two"]');
INSERT INTO "journal_events" VALUES('b24d36d01f1219d75d6eb0d1da43cd64','AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f','RE2','completed',1799999942.0,'{"account_sid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "call_sid": "CA1", "recording_sid": "RE2", "recording_url": "http://127.0.0.1:9/2010-04-01/Accounts/AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f/Recordings/RE2", "status": "completed", "duration": 7, "channels": null, "source": null, "start_time": null, "track": null, "conference_sid": null, "error_code": null, "params": {"AccountSid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "RecordingSid": "RE2"}}','["one"]');
INSERT INTO "journal_events" VALUES('76791ae69d6859e043b56cb6c27fcfa9','AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f','RE3','completed',1799999943.0,'{"account_sid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "call_sid": "CA1", "recording_sid": "RE3", "recording_url": "http://127.0.0.1:9/2010-04-01/Accounts/AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f/Recordings/RE3", "status": "completed", "duration": 7, "channels": null, "source": null, "start_time": null, "track": null, "conference_sid": null, "error_code": null, "params": {"AccountSid": "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "RecordingSid": "RE3"}}','["one", "two"]');
CREATE TABLE journal_runs (
        event_id text not null,
        rule text not null,
        idx integer not null,
        attempt integer not null,
        started_at real not null,
        ended_at real,
        outcome text not null,
        error text,
        outputs text);
INSERT INTO "journal_runs" VALUES('ddcbe8be8238c5681b8eff610c554a93','two',0,1,1800000000.0,1800000001.0,'done',NULL,'{"url": "file:///x"}');
INSERT INTO "journal_runs" VALUES('b24d36d01f1219d75d6eb0d1da43cd64','one',0,1,1800000000.0,1800000001.0,'error','transient',NULL);
INSERT INTO "journal_runs" VALUES('b24d36d01f1219d75d6eb0d1da43cd64','one',0,2,1800000003.0,1800000004.0,'failed','gave up',NULL);
CREATE TABLE journal_steps (
        event_id text not null,
        rule text not null,
        idx integer not null,
        rule_pos integer not null,
        step_id text,
        action text not null,
        state text not null,
        attempts integer not null default 0,
        next_at real not null,
        lease_until real,
        owner text,
        error text,
        outputs text,
        updated_at real not null,
        primary key (event_id, rule, idx));
INSERT INTO "journal_steps" VALUES('ddcbe8be8238c5681b8eff610c554a93','two',0,0,'s0','t_echo','done',1,1799999941.0,NULL,NULL,NULL,'{"url": "file:///x"}',1800000001.0);
INSERT INTO "journal_steps" VALUES('b24d36d01f1219d75d6eb0d1da43cd64','one',0,0,'s0','t_echo','failed',2,1800000004.0,NULL,NULL,'gave up',NULL,1800000004.0);
INSERT INTO "journal_steps" VALUES('76791ae69d6859e043b56cb6c27fcfa9','one',0,0,'s0','t_echo','queued',0,1799999943.0,NULL,NULL,NULL,NULL,1799999943.0);
INSERT INTO "journal_steps" VALUES('76791ae69d6859e043b56cb6c27fcfa9','two',0,1,'s0','t_echo','queued',0,1799999943.0,NULL,NULL,NULL,NULL,1799999943.0);
INSERT INTO "journal_steps" VALUES('ddcbe8be8238c5681b8eff610c554a93','two',1,0,'s1','t_echo','queued',0,1800000001.0,NULL,NULL,NULL,NULL,1800000001.0);
CREATE INDEX journal_events_received on journal_events (received_at);
CREATE INDEX journal_steps_state on journal_steps (state, next_at);
CREATE INDEX journal_runs_step on journal_runs (event_id, rule, idx);
