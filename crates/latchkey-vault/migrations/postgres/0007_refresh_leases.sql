-- Short cross-instance leases on a slot's refresh (R-MULTI-1): an instance about to
-- spend a refresh token takes the slot's lease first, so several instances on one
-- database make one refresh grant per expiry. No database lock is held across the
-- grant's HTTP call; a lease whose holder died expires on its own (a few seconds).
-- `subject` is '' for the shared slot (a primary key column cannot be NULL).
CREATE TABLE refresh_leases (
    tenant_id TEXT NOT NULL,
    server_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, server_id, subject)
);
