-- bench/p6_webhook.sql: one FreeScout webhook per transaction.  bench/run.py
-- fills bench_webhooks with real-format bodies (the simulator's conversation
-- objects for existing tickets: created, status, assigned, note events), each
-- signed with base64 HMAC-SHA1 under harness.WEBHOOK_SECRET, and passes the
-- row count as -D n=...  The primary-key lookup is the only extra work.
\set id random(1, :n)
SELECT freescout_webhook(body, signature, event) FROM bench_webhooks WHERE id = :id;
