-- Reference model of the platform data the service reads and erases (DESIGN.md section 4).
-- Deployments point the service at their real tables with the same shape.
CREATE SCHEMA IF NOT EXISTS platform;

CREATE TABLE platform.accounts (
    id   text PRIMARY KEY,
    name text NOT NULL DEFAULT ''
);

CREATE TABLE platform.users (
    id            text PRIMARY KEY,
    email         text UNIQUE,
    enterprise_id text
);
CREATE INDEX users_email_lower_idx ON platform.users (lower(email));
CREATE INDEX users_enterprise_id_idx ON platform.users (enterprise_id);

CREATE TABLE platform.account_members (
    account_id text NOT NULL REFERENCES platform.accounts (id),
    user_id    text NOT NULL REFERENCES platform.users (id),
    role       text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX account_members_user_id_idx ON platform.account_members (user_id);

CREATE TABLE platform.channel_identities (
    channel_id      text NOT NULL,
    channel_user_id text NOT NULL,
    user_id         text NOT NULL REFERENCES platform.users (id),
    PRIMARY KEY (channel_id, channel_user_id)
);
CREATE INDEX channel_identities_channel_user_id_idx ON platform.channel_identities (channel_user_id);

CREATE TABLE platform.bots (
    id         text PRIMARY KEY,
    account_id text NOT NULL REFERENCES platform.accounts (id),
    name       text NOT NULL DEFAULT ''
);
CREATE INDEX bots_account_id_idx ON platform.bots (account_id);

CREATE TABLE platform.bot_collaborators (
    bot_id  text NOT NULL REFERENCES platform.bots (id),
    user_id text NOT NULL REFERENCES platform.users (id),
    role    text NOT NULL DEFAULT 'co_developer' CHECK (role IN ('owner', 'co_developer')),
    PRIMARY KEY (bot_id, user_id)
);
CREATE INDEX bot_collaborators_user_id_idx ON platform.bot_collaborators (user_id);

-- API apps. `secret_sealed` holds the HS256 client secret sealed with ERASURE_SECRET_KEY
-- (XChaCha20-Poly1305); `public_key_pem` holds an RS256 app's public key instead.
CREATE TABLE platform.api_apps (
    client_id      text PRIMARY KEY,
    account_id     text NOT NULL REFERENCES platform.accounts (id),
    scopes         text[] NOT NULL DEFAULT '{}',
    algorithm      text NOT NULL DEFAULT 'HS256' CHECK (algorithm IN ('HS256', 'RS256')),
    secret_sealed  bytea,
    public_key_pem text,
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The three stores erased per (bot, user). No foreign keys: they are the platform's
-- high-volume tables, and erasure must never cascade anywhere else.
CREATE TABLE platform.conversations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id     text NOT NULL,
    user_id    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    message    text NOT NULL DEFAULT ''
);
CREATE INDEX conversations_user_bot_idx ON platform.conversations (user_id, bot_id);

CREATE TABLE platform.sessions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id     text NOT NULL,
    user_id    text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    channel_id text
);
CREATE INDEX sessions_user_bot_idx ON platform.sessions (user_id, bot_id);

CREATE TABLE platform.analytics_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id      text NOT NULL,
    user_id     text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    event       text NOT NULL DEFAULT ''
);
CREATE INDEX analytics_events_user_bot_idx ON platform.analytics_events (user_id, bot_id);
