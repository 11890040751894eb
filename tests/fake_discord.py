"""A fake Discord (gateway websocket + REST) on loopback, for end-to-end tests of the real discord.py client.

Recipe and payload shapes: /work/shared/FAKE_DISCORD.md. Everything the bot sends is recorded as a
`RecordedRequest`; `FakeDiscord.invoke()` / `click()` inject interactions and return an `InteractionHandle`
whose `wait_for*()` methods await what the bot sends for that interaction token.

Shards: `GET /gateway/bot` recommends `shard_count` shards; a connection that IDENTIFYs with
`shard: [id, count]` gets READY with that shard and the guilds Discord routes to it
(`(guild_id >> 22) % count`), and every event of a guild goes out on its shard's connection (direct
messages on shard 0), whichever bot process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord.gateway
import discord.http
import pytest
import yarl
from aiohttp import BodyPartReader, WSMsgType, web

API = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
ADMINISTRATOR = 0x8
MANAGE_GUILD = 0x20
# view channel, send messages, embed links, attach files, read history, use application commands
DEFAULT_PERMISSIONS = 0x400 | 0x800 | 0x4000 | 0x8000 | 0x10000 | 0x8000_0000
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
EPHEMERAL, LOADING = 64, 128
PUBLIC_THREAD = 11

Json = dict[str, Any]
Predicate = Callable[["RecordedRequest"], bool]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class CommandUnavailable(LookupError):
    """Raised by `invoke` when Discord would not offer the command to that user (or it was never synced)."""


# Discord's JSON error codes, with the HTTP status and message Discord sends them with.
_ERRORS: dict[int, tuple[int, str]] = {
    10003: (404, "Unknown Channel"),
    10008: (404, "Unknown Message"),
    10015: (404, "Unknown Webhook"),
    10062: (404, "Unknown interaction"),
    40005: (413, "Request entity too large"),
    40060: (400, "Interaction has already been acknowledged."),
    50001: (403, "Missing Access"),
    50027: (401, "Invalid Webhook Token"),
    50035: (400, "Invalid Form Body"),
}


class _ApiError(Exception):
    def __init__(self, code: int, *, status: int = 0, message: str = "", **extra: Any) -> None:
        status, message = _ERRORS.get(code, (status, message))
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: Json = {"message": message, "code": code, **extra}


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False

    def payload(self) -> Json:
        return {"id": str(self.id), "username": self.name, "global_name": self.name, "discriminator": "0",
                "avatar": None, "bot": self.bot, "public_flags": 0}  # fmt: skip


@dataclass
class FakeMember:
    user: FakeUser
    permissions: int
    roles: list[int] = field(default_factory=list)
    joined_at: str = field(default_factory=_now)

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self) -> Json:
        return {"user": self.user.payload(), "roles": [str(r) for r in self.roles], "joined_at": self.joined_at,
                "flags": 0, "deaf": False, "mute": False, "pending": False, "nick": None,
                "permissions": str(self.permissions)}  # fmt: skip


@dataclass
class FakeChannel:
    id: int
    guild_id: int
    name: str
    position: int = 0
    type: int = 0  # GUILD_TEXT; PUBLIC_THREAD (11) for a thread
    nsfw: bool = False  # Discord's age-restricted flag (a thread has none of its own: it follows its parent)
    parent_id: int | None = None  # a thread's channel

    @property
    def is_thread(self) -> bool:
        return self.type == PUBLIC_THREAD

    def payload(self) -> Json:
        if self.is_thread:
            return {"id": str(self.id), "guild_id": str(self.guild_id), "type": self.type, "name": self.name,
                    "parent_id": str(self.parent_id), "owner_id": str(self.guild_id), "last_message_id": None,
                    "rate_limit_per_user": 0, "message_count": 0, "member_count": 1, "flags": 0,
                    "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "locked": False,
                                        "archive_timestamp": _now()}}  # fmt: skip
        return {"id": str(self.id), "guild_id": str(self.guild_id), "type": self.type, "name": self.name,
                "position": self.position, "permission_overwrites": [], "nsfw": self.nsfw, "topic": None,
                "parent_id": None, "last_message_id": None, "rate_limit_per_user": 0}  # fmt: skip


@dataclass
class FakeGuild:
    """A guild whose @everyone role id equals the guild id; build it up with `text_channel()` and `member()`."""

    id: int
    name: str
    owner_id: int
    new_id: Callable[[], int] = field(repr=False)
    everyone_permissions: int = DEFAULT_PERMISSIONS
    channels: list[FakeChannel] = field(default_factory=list)
    members: dict[int, FakeMember] = field(default_factory=dict)

    def text_channel(self, name: str, channel_id: int | None = None, *, nsfw: bool = False) -> FakeChannel:
        """Add a text channel (`nsfw`: Discord marks it age-restricted)."""
        channel = FakeChannel(channel_id or self.new_id(), self.id, name, position=len(self.channels), nsfw=nsfw)
        self.channels.append(channel)
        return channel

    def thread(self, name: str, parent: FakeChannel) -> FakeChannel:
        """Add a public thread under `parent` (add it before the bot connects: it is in GUILD_CREATE)."""
        thread = FakeChannel(self.new_id(), self.id, name, type=PUBLIC_THREAD, parent_id=parent.id)
        self.channels.append(thread)
        return thread

    def member(self, user_id: int, name: str, permissions: int = DEFAULT_PERMISSIONS) -> FakeMember:
        """Add a member whose computed channel permissions are `permissions` (e.g. MANAGE_GUILD for an admin)."""
        member = FakeMember(FakeUser(user_id, name), permissions)
        self.members[user_id] = member
        return member

    def payload(self, me: FakeUser) -> Json:
        """The GUILD_CREATE payload (the bot itself is listed as a member)."""
        everyone = {"id": str(self.id), "name": "@everyone", "permissions": str(self.everyone_permissions),
                    "position": 0, "managed": False, "mentionable": False, "flags": 0}  # fmt: skip
        members = [m.payload() for m in self.members.values()] + [FakeMember(me, ADMINISTRATOR).payload()]
        return {"id": str(self.id), "name": self.name, "icon": None, "owner_id": str(self.owner_id),
                "unavailable": False, "large": False, "member_count": len(members), "roles": [everyone],
                "channels": [c.payload() for c in self.channels if not c.is_thread], "members": members,
                "threads": [c.payload() for c in self.channels if c.is_thread],
                "features": [], "emojis": [], "stickers": [], "voice_states": [], "presences": [],
                "joined_at": _now(), "preferred_locale": "en-US", "premium_tier": 0}  # fmt: skip


@dataclass(frozen=True)
class RecordedFile:
    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """One HTTP request the bot made, with the answer the fake gave."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    files: list[RecordedFile]
    token: str | None  # interaction/webhook token in the path, if any
    status: int = 0
    response: Any = None
    at: float = field(default_factory=time.perf_counter)  # when the fake had read it (the load benchmark's clock)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> int | None:
        return self.response.get("code") if isinstance(self.response, dict) and not self.ok else None

    @property
    def is_callback(self) -> bool:
        return self.method == "POST" and self.path.endswith("/callback")

    @property
    def is_followup(self) -> bool:
        return self.method == "POST" and self.path.startswith("/webhooks/") and self.path.count("/") == 3

    @property
    def is_edit(self) -> bool:
        return self.method == "PATCH" and self.path.endswith("/messages/@original")

    @property
    def data(self) -> Json:
        """The message part of the body: `data` of a callback, the body itself otherwise."""
        body = self.json if isinstance(self.json, dict) else {}
        return body.get("data") or {} if self.is_callback else body

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags") or 0) & EPHEMERAL)


@dataclass
class _Interaction:
    id: int
    token: str
    channel_id: int
    guild_id: int | None
    size_limit: int
    kind: int
    component_message_id: int | None = None
    acked: bool = False
    loading: bool = False
    expired: bool = False
    original_id: int | None = None
    message_ids: set[int] = field(default_factory=set)


class InteractionHandle:
    """What a test holds after `invoke()`/`click()`: the payload sent and the requests the bot made for it."""

    def __init__(self, fake: FakeDiscord, payload: Json) -> None:
        self.fake = fake
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]

    @property
    def requests(self) -> list[RecordedRequest]:
        return [r for r in self.fake.requests if r.token == self.token]

    @property
    def callbacks(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_callback]

    @property
    def followups(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_followup]

    @property
    def edits(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_edit]

    @property
    def original_message(self) -> Json | None:
        """The @original message as the fake holds it now."""
        original_id = self.fake._interactions[self.token].original_id
        return None if original_id is None else self.fake.messages.get(original_id)

    def final_files(self) -> list[RecordedFile]:
        """Files of the last successful request for this interaction that uploaded any."""
        return next((r.files for r in reversed(self.requests) if r.files and r.ok), [])

    async def wait_for(self, predicate: Predicate) -> RecordedRequest:
        """The first request for this interaction matching `predicate`, awaiting it (up to `fake.timeout`)."""
        return await self.fake.wait_for_request(lambda r: r.token == self.token and predicate(r))

    async def wait_for_callback(self) -> RecordedRequest:
        return await self.wait_for(lambda r: r.is_callback)

    async def wait_for_followup(self) -> RecordedRequest:
        return await self.wait_for(lambda r: r.is_followup)

    async def wait_for_edit(self) -> RecordedRequest:
        return await self.wait_for(lambda r: r.is_edit)


def shard_of(guild_id: int | None, count: int) -> int:
    """The shard Discord routes a guild's events to (direct messages: shard 0)."""
    return 0 if guild_id is None else (guild_id >> 22) % count


@dataclass
class GatewayConnection:
    ws: web.WebSocketResponse
    path: str
    shard: tuple[int, int] | None = None  # (id, count) from IDENTIFY; None: an unsharded client
    compressor: Any = None  # zlib compressobj when the client asked for zlib-stream
    session_id: str | None = None
    resumed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, payload: Json) -> None:
        raw = json.dumps(payload).encode()
        async with self.lock:  # compress + send must not interleave: the stream is stateful
            if self.compressor is None:
                await self.ws.send_str(raw.decode())
            else:
                await self.ws.send_bytes(self.compressor.compress(raw) + self.compressor.flush(zlib.Z_SYNC_FLUSH))


@dataclass
class _RateLimit:
    match: str
    times: int
    retry_after: float
    is_global: bool


Handler = Callable[[web.Request, RecordedRequest], Awaitable[Any]]


class FakeDiscord:
    """Gateway + REST fake. `start()`, then `patch_discord()` points discord.py at it."""

    def __init__(self, *, token: str | None = None, timeout: float = 5.0) -> None:
        self.token = token or f"fake-bot-token.{secrets.token_hex(8)}"
        self.timeout = timeout  # how long every wait_for*() waits before failing the test
        self._ids = itertools.count(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) + 1)
        self.bot_user = FakeUser(self.new_id(), "Stepgrid", bot=True)
        self.application_id = self.bot_user.id
        self.owner = FakeUser(self.new_id(), "owner")
        self.guilds: dict[int, FakeGuild] = {}
        self.guild = self.add_guild("Stepgrid Test Guild")
        self.channel = self.guild.channels[0]
        self.member = self.guild.member(self.new_id(), "alice")
        self.admin = self.guild.member(self.new_id(), "root", DEFAULT_PERMISSIONS | MANAGE_GUILD)
        self.requests: list[RecordedRequest] = []
        self.unknown_requests: list[RecordedRequest] = []
        self.commands: dict[int | None, list[Json]] = {}  # guild id (None: global) -> synced commands
        self.messages: dict[int, Json] = {}
        self.deleted_messages: set[int] = set()
        self.attachments: dict[int, RecordedFile] = {}
        self.attachment_downloads: list[int] = []  # ids of the attachments the bot asked the CDN for, in order
        self._attachment_gates: dict[int, asyncio.Event] = {}
        self.connections: list[GatewayConnection] = []
        self.identify_count = 0
        self.shard_count = 1  # what GET /gateway/bot recommends
        self.max_concurrency = 16  # IDENTIFYs per 5 s Discord allows (a large bot's 16: tests don't wait)
        self._session_shards: dict[str, tuple[int, int] | None] = {}
        self._sessions: dict[str, int] = {}  # session id -> last sequence number
        self._interactions: dict[str, _Interaction] = {}
        self._rate_limits: list[_RateLimit] = []
        self._held: list[tuple[Predicate, asyncio.Event]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway-resume", self._gateway)
        app.router.add_get("/attachments/{aid}/{filename}", self._attachment)
        routes: list[tuple[str, str, Handler, bool]] = [
            ("GET", "/users/@me", self._users_me, True),
            ("GET", "/gateway/bot", self._gateway_bot, True),
            ("GET", "/oauth2/applications/@me", self._application, True),
            ("GET", "/applications/{app}/commands", self._get_commands, True),
            ("PUT", "/applications/{app}/commands", self._sync_commands, True),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self._get_commands, True),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._sync_commands, True),
            ("POST", "/interactions/{iid}/{token}/callback", self._callback, False),
            ("POST", "/webhooks/{app}/{token}", self._followup, False),
            ("GET", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message, False),
            ("PATCH", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message, False),
            ("DELETE", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message, False),
            ("GET", "/channels/{cid}", self._get_channel, True),
            ("POST", "/channels/{cid}/messages", self._channel_message, True),
            ("GET", "/channels/{cid}/messages/{mid}", self._channel_message, True),
            ("PATCH", "/channels/{cid}/messages/{mid}", self._channel_message, True),
            ("DELETE", "/channels/{cid}/messages/{mid}", self._channel_message, True),
        ]
        for method, path, handler, auth in routes:
            app.router.add_route(method, API + path, self._wrap(handler, auth=auth))
        app.router.add_route("*", "/{tail:.*}", self._wrap(self._unknown, auth=False))
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for conn in self.connections:
            await conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this fake; restore both on exit."""
        old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.base_url + API
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(f"ws://127.0.0.1:{self.port}/gateway")
        try:
            yield
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway

    # ---- builders and knobs ----------------------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def guild_id_on_shard(self, shard: int, count: int) -> int:
        """A new guild id that Discord routes to `shard` of `count` ((id >> 22) % count == shard)."""
        base = self.new_id()
        moment = base >> 22
        return ((moment + (shard - moment) % count) << 22) | (base & ((1 << 22) - 1))

    def add_guild(self, name: str, guild_id: int | None = None) -> FakeGuild:
        """A guild with @everyone and a #general text channel; add guilds before the bot connects."""
        guild = FakeGuild(guild_id or self.new_id(), name, self.owner.id, self.new_id)
        guild.text_channel("general")
        self.guilds[guild.id] = guild
        return guild

    def rotate_token(self) -> str:
        """Reset the token as the developer portal does: the old one gets 401 on REST, 4004 at IDENTIFY."""
        self.token = f"fake-bot-token.{secrets.token_hex(8)}"
        return self.token

    def expire_token(self, token: str | InteractionHandle) -> None:
        """Act as if 15 minutes passed: callbacks get 10062, webhook calls 401 / 50027 Invalid Webhook Token."""
        self._interactions[token.token if isinstance(token, InteractionHandle) else token].expired = True

    def simulate_rate_limit(
        self, match: str = "", *, times: int = 1, retry_after: float = 0.01, is_global: bool = False
    ) -> None:
        """Answer the next `times` requests whose "METHOD /path" contains `match` with 429 + retry_after."""
        self._rate_limits.append(_RateLimit(match, times, retry_after, is_global))

    def channel_messages(self, channel_id: int) -> list[Json]:
        return [
            m for i, m in self.messages.items() if m["channel_id"] == str(channel_id) and i not in self.deleted_messages
        ]

    def assert_no_unknown_routes(self) -> None:
        hits = [f"{r.method} {r.path}" for r in self.unknown_requests]
        assert not hits, f"the bot called routes the fake does not know: {hits}"

    # ---- waiting ---------------------------------------------------------------------------------------
    async def _wait(self, ready: Callable[[], Any], what: str) -> Any:
        async with self._changed:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._changed.wait_for(ready)
            except TimeoutError:
                raise AssertionError(f"timed out after {self.timeout}s waiting for {what}") from None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_request(self, predicate: Predicate) -> RecordedRequest:
        """The first recorded request matching `predicate`, awaiting it if needed."""
        found: RecordedRequest = await self._wait(
            lambda: next((r for r in self.requests if predicate(r)), None), "a matching request"
        )
        return found

    async def wait_until_ready(self) -> GatewayConnection:
        """The live gateway connection once the bot has identified (or resumed)."""
        conn: GatewayConnection = await self._wait(self._live_connection, "the bot to identify")
        return conn

    def _live_connection(self) -> GatewayConnection | None:
        live = [c for c in self.connections if c.session_id is not None and not c.ws.closed]
        return live[-1] if live else None

    def live_shards(self) -> dict[int, GatewayConnection]:
        """The identified (or resumed) connections that are open, by shard id."""
        live = [c for c in self.connections if c.session_id is not None and not c.ws.closed and c.shard]
        return {c.shard[0]: c for c in live if c.shard is not None}

    async def wait_for_shards(self, count: int) -> dict[int, GatewayConnection]:
        """Every shard 0..count-1 live (in whichever bot processes)."""

        def all_live() -> dict[int, GatewayConnection] | None:
            shards = self.live_shards()
            return shards if set(shards) >= set(range(count)) else None

        found: dict[int, GatewayConnection] = await self._wait(all_live, f"{count} shards to identify")
        return found

    def _shard_connection(self, guild_id: int | None) -> GatewayConnection | None:
        """The live connection a guild's events go to: its shard's, or the one connection of an unsharded bot."""
        live = self._live_connection()
        if live is None or live.shard is None:
            return live
        return self.live_shards().get(shard_of(guild_id, live.shard[1]))

    # ---- gateway ---------------------------------------------------------------------------------------
    async def dispatch(self, event: str, data: Json) -> None:
        """Send a dispatch (op 0) event to the bot on the live connection of the event's guild's shard."""
        guild_id = int(data["guild_id"]) if data.get("guild_id") else None
        conn: GatewayConnection = await self._wait(
            lambda: self._shard_connection(guild_id), f"the shard of guild {guild_id} to identify"
        )
        await self._dispatch_on(conn, event, data)

    async def _dispatch_on(self, conn: GatewayConnection, event: str, data: Json) -> None:
        assert conn.session_id is not None
        self._sessions[conn.session_id] += 1
        await conn.send({"op": 0, "t": event, "s": self._sessions[conn.session_id], "d": data})

    async def force_reconnect(self) -> GatewayConnection:
        """Send op 7 RECONNECT and return the new connection once the bot has resumed on it."""
        old = await self.wait_until_ready()
        await old.send({"op": 7, "d": None})
        conn: GatewayConnection = await self._wait(
            lambda: next((c for c in self.connections if c.resumed and c is not old and not c.ws.closed), None),
            "the bot to resume",
        )
        return conn

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = GatewayConnection(ws, request.path)
        if request.query.get("compress") == "zlib-stream":
            conn.compressor = zlib.compressobj()
        self.connections.append(conn)
        await conn.send({"op": 10, "d": {"heartbeat_interval": 41250}})
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._gateway_message(conn, json.loads(msg.data))
        await self._notify()
        return ws

    async def _gateway_message(self, conn: GatewayConnection, msg: Json) -> None:
        op, data = msg.get("op"), msg.get("d") or {}
        if op == 1:
            await conn.send({"op": 11})
        elif op == 2:
            await self._identify(conn, data)
        elif op == 6:
            if data.get("token") != self.token or data.get("session_id") not in self._sessions:
                await conn.send({"op": 9, "d": False})
                return
            conn.session_id, conn.resumed = data["session_id"], True
            conn.shard = self._session_shards.get(conn.session_id)
            await self._dispatch_on(conn, "RESUMED", {})
            await self._notify()
        elif op == 8:  # request guild members (only with the members intent)
            guild = self.guilds[int(data["guild_id"])]
            chunk = {"guild_id": str(guild.id), "members": guild.payload(self.bot_user)["members"],
                     "chunk_index": 0, "chunk_count": 1, "nonce": data.get("nonce")}  # fmt: skip
            await self._dispatch_on(conn, "GUILD_MEMBERS_CHUNK", chunk)

    async def _identify(self, conn: GatewayConnection, data: Json) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identify_count += 1
        shard = data.get("shard")
        if shard is not None:
            shard_id, count = int(shard[0]), int(shard[1])
            if not 0 <= shard_id < count:
                await conn.ws.close(code=4010, message=b"Invalid shard.")
                return
            conn.shard = (shard_id, count)
        guilds = [g for g in self.guilds.values() if conn.shard is None or shard_of(g.id, conn.shard[1]) == shard_id]
        conn.session_id = secrets.token_hex(16)
        self._sessions[conn.session_id] = 0
        self._session_shards[conn.session_id] = conn.shard
        ready = {"v": 10, "user": self.bot_user.payload(), "session_id": conn.session_id, "session_type": "normal",
                 "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway-resume",
                 "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
                 "application": {"id": str(self.application_id), "flags": 0},
                 "private_channels": [], "relationships": [], "presences": []}  # fmt: skip
        if conn.shard is not None:
            ready["shard"] = list(conn.shard)
        await self._dispatch_on(conn, "READY", ready)
        for guild in guilds:
            await self._dispatch_on(conn, "GUILD_CREATE", guild.payload(self.bot_user))
        await self._notify()

    # ---- interactions ----------------------------------------------------------------------------------
    def command(self, name: str, guild: FakeGuild | None = None) -> Json | None:
        """The synced command called `name`: the guild's own first, then the global one."""
        scopes = ([guild.id] if guild else []) + [None]
        return next((c for s in scopes for c in self.commands.get(s, []) if c["name"] == name), None)

    async def invoke(
        self,
        name: str,
        options: Json | list[Json] | None = None,
        *,
        user: FakeMember | None = None,
        guild: FakeGuild | None = None,
        channel: FakeChannel | None = None,
        subcommand: str | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT,
        resolved: Json | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Run slash command `name` as `user` (default: a normal member); `subcommand` may be "group sub"."""
        guild = guild or self.guild
        user = user or self.member
        command: Json = await self._wait(lambda: self.command(name, guild), f"/{name} to be synced")
        required = command.get("default_member_permissions")
        if (
            required is not None
            and not user.permissions & ADMINISTRATOR
            and user.permissions & int(required) != int(required)
        ):
            raise CommandUnavailable(f"Discord does not show /{name} to {user.user.name} (needs {required})")
        opts = options if isinstance(options, list) else [_option(k, v) for k, v in (options or {}).items()]
        known = command.get("options", [])
        for part in reversed((subcommand or "").split()):
            opts = [{"name": part, "type": 1, "options": opts}]
        for part in (subcommand or "").split():
            match = next((o for o in known if o["name"] == part and o["type"] in (1, 2)), None)
            if match is None:
                raise CommandUnavailable(f"/{name} has no subcommand {subcommand!r}")
            known = match.get("options", [])
        if subcommand and len(subcommand.split()) == 2:
            opts[0]["type"] = 2
        data: Json = {"id": command["id"], "name": name, "type": command.get("type", 1), "options": opts}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return await self._interact(2, data, user, guild, channel, attachment_size_limit, locale, None)

    async def autocomplete(
        self,
        name: str,
        options: Json,
        focused: str,
        *,
        user: FakeMember | None = None,
        guild: FakeGuild | None = None,
    ) -> InteractionHandle:
        """Type into option `focused` of /`name` (the other options as already filled in): Discord asks the
        bot for choices with an APPLICATION_COMMAND_AUTOCOMPLETE interaction (type 4); the bot answers 8."""
        guild = guild or self.guild
        command: Json = await self._wait(lambda: self.command(name, guild), f"/{name} to be synced")
        opts = [_option(key, value) for key, value in options.items()]
        for option in opts:
            if option["name"] == focused:
                option["focused"] = True
        data: Json = {"id": command["id"], "name": name, "type": command.get("type", 1), "options": opts}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return await self._interact(4, data, user or self.member, guild, None, DEFAULT_ATTACHMENT_LIMIT, "en-US", None)

    async def click(
        self,
        message: Json | int,
        custom_id: str,
        *,
        user: FakeMember | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT,
    ) -> InteractionHandle:
        """Press the button `custom_id` on a message the bot sent (looked up as the fake holds it now)."""
        return await self._component(message, custom_id, None, user, attachment_size_limit)

    async def choose(
        self, message: Json | int, custom_id: str, value: str, *, user: FakeMember | None = None
    ) -> InteractionHandle:
        """Pick the option `value` in the select menu `custom_id` on a message the bot sent."""
        return await self._component(message, custom_id, value, user, DEFAULT_ATTACHMENT_LIMIT)

    async def _component(
        self, message: Json | int, custom_id: str, value: str | None, user: FakeMember | None, size_limit: int
    ) -> InteractionHandle:
        message_id = message if isinstance(message, int) else int(message["id"])
        current = self.messages.get(message_id)
        if current is None or message_id in self.deleted_messages:
            raise LookupError(f"message {message_id} does not exist (any more)")
        component = next((c for c in _walk(current.get("components", [])) if c.get("custom_id") == custom_id), None)
        if component is None or component.get("disabled"):
            raise LookupError(f"no enabled component {custom_id!r} on message {message_id}")
        data: Json = {"custom_id": custom_id, "component_type": component["type"]}
        if value is not None:
            if component["type"] != 3 or value not in [option["value"] for option in component.get("options", [])]:
                raise LookupError(f"{custom_id!r} on message {message_id} is not a menu with the option {value!r}")
            data["values"] = [value]
        channel = next(c for g in self.guilds.values() for c in g.channels if str(c.id) == current["channel_id"])
        guild = self.guilds[channel.guild_id]
        return await self._interact(3, data, user or self.member, guild, channel, size_limit, "en-US", current)

    async def _interact(
        self,
        kind: int,
        data: Json,
        user: FakeMember,
        guild: FakeGuild,
        channel: FakeChannel | None,
        size_limit: int,
        locale: str,
        message: Json | None,
    ) -> InteractionHandle:
        channel = channel or guild.channels[0]
        iid, token = self.new_id(), f"aW50ZXJhY3Rpb24.{secrets.token_urlsafe(48)}"
        payload: Json = {"id": str(iid), "application_id": str(self.application_id), "type": kind, "token": token,
                         "version": 1, "attachment_size_limit": size_limit, "app_permissions": str(DEFAULT_PERMISSIONS),
                         "locale": locale, "guild_locale": "en-US", "entitlements": [], "context": 0,
                         "authorizing_integration_owners": {"0": str(guild.id)}, "guild_id": str(guild.id),
                         "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
                         "channel_id": str(channel.id), "channel": channel.payload(), "member": user.payload(),
                         "data": data}  # fmt: skip
        if message is not None:
            payload["message"] = message
        self._interactions[token] = _Interaction(
            iid, token, channel.id, guild.id, size_limit, kind, None if message is None else int(message["id"])
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return InteractionHandle(self, payload)

    def hold_answers(self, predicate: Predicate) -> asyncio.Event:
        """Carry out the requests matching `predicate` but hold back their answers until the event is set."""
        release = asyncio.Event()
        self._held.append((predicate, release))
        return release

    async def invoke_in_dm(
        self, name: str, options: Json | None = None, *, user: FakeUser | None = None
    ) -> InteractionHandle:
        """Run slash command `name` from a direct message, as a client that ignores the command's contexts would."""
        user = user or self.member.user
        command: Json = await self._wait(lambda: self.command(name, self.guild), f"/{name} to be synced")
        data: Json = {"id": command["id"], "name": name, "type": command.get("type", 1),
                      "options": [_option(k, v) for k, v in (options or {}).items()]}  # fmt: skip
        return await self._interact_dm(2, data, user)

    async def press(
        self, custom_id: str, *, user: FakeMember | FakeUser | None = None, guild: FakeGuild | None = None,
        dm: bool = False,
    ) -> InteractionHandle:  # fmt: skip
        """Send a button click with any `custom_id`, as a crafted client can (the message need not exist).

        In `guild` (default: the test guild) as a member, or with `dm` from a direct message.
        """
        data = {"custom_id": custom_id, "component_type": 2}
        if dm:
            plain = user.user if isinstance(user, FakeMember) else user
            return await self._interact_dm(3, data, plain or self.member.user)
        guild = guild or self.guild
        member = user if isinstance(user, FakeMember) else self.member
        channel = guild.channels[0]
        message = self._create_message(channel.id, {"content": "crafted", "components": _buttons(custom_id)}, [])
        return await self._interact(3, data, member, guild, channel, DEFAULT_ATTACHMENT_LIMIT, "en-US", message)

    async def _interact_dm(self, kind: int, data: Json, user: FakeUser) -> InteractionHandle:
        channel_id, iid = self.new_id(), self.new_id()
        token = f"aW50ZXJhY3Rpb24.{secrets.token_urlsafe(48)}"
        channel = {"id": str(channel_id), "type": 1, "recipients": [user.payload()], "last_message_id": None,
                   "flags": 0}  # fmt: skip
        payload: Json = {"id": str(iid), "application_id": str(self.application_id), "type": kind, "token": token,
                         "version": 1, "attachment_size_limit": DEFAULT_ATTACHMENT_LIMIT,
                         "app_permissions": str(DEFAULT_PERMISSIONS), "locale": "en-US", "entitlements": [],
                         "context": 1, "authorizing_integration_owners": {"1": str(user.id)},
                         "channel_id": str(channel_id), "channel": channel, "user": user.payload(),
                         "data": data}  # fmt: skip
        message_id = None
        if kind == 3:
            message = {"id": str(self.new_id()), "channel_id": str(channel_id), "type": 0, "content": "crafted",
                       "author": self.bot_user.payload(), "attachments": [], "embeds": [], "mentions": [],
                       "mention_roles": [], "components": _buttons(data["custom_id"]), "flags": 0, "timestamp": _now(),
                       "edited_timestamp": None, "tts": False, "mention_everyone": False, "pinned": False}  # fmt: skip
            self.messages[int(message["id"])] = message
            payload["message"], message_id = message, int(message["id"])
        self._interactions[token] = _Interaction(
            iid, token, channel_id, None, DEFAULT_ATTACHMENT_LIMIT, kind, message_id
        )
        await self.dispatch("INTERACTION_CREATE", payload)
        return InteractionHandle(self, payload)

    # ---- REST plumbing ---------------------------------------------------------------------------------
    def _wrap(self, handler: Handler, *, auth: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            rec = await self._record(request)
            headers: dict[str, str] = {}
            try:
                self._maybe_rate_limit(rec, headers)
                if auth and request.headers.get("Authorization") != f"Bot {self.token}":
                    raise _ApiError(0, status=401, message="401: Unauthorized")
                data = await handler(request, rec)
                rec.status, rec.response = (204, None) if data is None else (200, data)
            except _ApiError as exc:
                rec.status, rec.response = exc.status, exc.body
            resp = web.Response(status=rec.status, headers=headers)
            if rec.response is not None:
                resp.body = json.dumps(rec.response).encode()
                resp.headers["Content-Type"] = "application/json"  # exactly: discord.py compares the whole header
            hold = next((event for match, event in self._held if match(rec)), None)
            if hold is not None:
                # Done on Discord's side, but the bot hears nothing until the test lets it (or kills it).
                self.requests.append(rec)
                await self._notify()
                await hold.wait()
                with contextlib.suppress(ConnectionError):
                    await resp.prepare(request)
                    await resp.write_eof()
                return resp
            # Flush the answer before tests see the record, so the bot is not behind what the test asserts.
            await resp.prepare(request)
            await resp.write_eof()
            self.requests.append(rec)
            await self._notify()
            return resp

        return route

    async def _record(self, request: web.Request) -> RecordedRequest:
        body: Any = None
        files: list[RecordedFile] = []
        if request.content_type.startswith("multipart/"):
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.filename is not None:
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    files.append(RecordedFile(part.name or "", part.filename, ctype, bytes(await part.read())))
        elif request.body_exists:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        path = request.path.removeprefix(API)
        return RecordedRequest(request.method, path, dict(request.query), body, files, request.match_info.get("token"))

    def _maybe_rate_limit(self, rec: RecordedRequest, headers: dict[str, str]) -> None:
        rule = next((r for r in self._rate_limits if r.match in f"{rec.method} {rec.path}"), None)
        if rule is None:
            return
        rule.times -= 1
        if rule.times <= 0:
            self._rate_limits.remove(rule)
        # discord.py only retries a 429 that came through Discord's proxy (a Via header); else it is Cloudflare.
        headers.update({"Via": "1.1 google", "Retry-After": str(rule.retry_after), "X-RateLimit-Scope": "user"})
        raise _ApiError(0, status=429, message="You are being rate limited.", retry_after=rule.retry_after,
                        **{"global": rule.is_global})  # fmt: skip

    def _check_files(self, rec: RecordedRequest, limit: int) -> None:
        if any(len(f.data) > limit for f in rec.files):
            raise _ApiError(40005)

    def _interaction_for_webhook(self, request: web.Request) -> _Interaction:
        ix = self._interactions.get(request.match_info["token"])
        if ix is None or request.match_info["app"] != str(self.application_id):
            raise _ApiError(10015)
        if ix.expired:
            raise _ApiError(50027)
        return ix

    def member_upload(self, filename: str, data: bytes, content_type: str = "image/png") -> Json:
        """A file a member attached to a command: its Attachment object (served on loopback like the
        CDN); pass it as an option of type 11 with `attachment_option` and `resolved`."""
        return self._attachments([RecordedFile("files[0]", filename, content_type, data)])[0]

    def _attachments(self, files: list[RecordedFile]) -> list[Json]:
        """Attachment objects for uploaded files, served back under /attachments/ like Discord's CDN."""
        attachments = []
        for f in files:
            aid = self.new_id()
            self.attachments[aid] = f
            url = f"{self.base_url}/attachments/{aid}/{f.filename}"
            attachments.append({"id": str(aid), "filename": f.filename, "size": len(f.data), "url": url,
                                "proxy_url": url, "content_type": f.content_type})  # fmt: skip
        return attachments

    def _create_message(self, channel_id: int, body: Json, files: list[RecordedFile], flags: int = 0) -> Json:
        message: Json = {"id": str(self.new_id()), "channel_id": str(channel_id), "type": 0,
                         "content": body.get("content") or "", "author": self.bot_user.payload(),
                         "attachments": self._attachments(files), "embeds": body.get("embeds") or [],
                         "components": body.get("components") or [], "mentions": [], "mention_roles": [],
                         "mention_everyone": False, "pinned": False, "tts": bool(body.get("tts")),
                         "flags": flags, "timestamp": _now(), "edited_timestamp": None}  # fmt: skip
        guild_id = next((g.id for g in self.guilds.values() for c in g.channels if c.id == channel_id), None)
        if guild_id is not None:
            message["guild_id"] = str(guild_id)
        self.messages[int(message["id"])] = message
        return message

    def _create_interaction_message(self, ix: _Interaction, body: Json, files: list[RecordedFile], flags: int) -> Json:
        message = self._create_message(ix.channel_id, body, files, flags)
        app_id = str(self.application_id)
        message.update(webhook_id=app_id, application_id=app_id, type=20 if ix.kind == 2 else 0)
        ix.message_ids.add(int(message["id"]))
        return message

    def _edit_message(self, message: Json, body: Json, files: list[RecordedFile]) -> Json:
        """Apply an edit: only the fields the body names change; listed attachment ids are kept."""
        kept = message["attachments"]
        if "attachments" in body:
            keep_ids = {str(a.get("id")) for a in body["attachments"] or []}
            kept = [a for a in kept if a["id"] in keep_ids]
        if "content" in body:
            message["content"] = body["content"] or ""
        message.update({k: body[k] or [] for k in ("embeds", "components") if k in body})
        message.update(attachments=kept + self._attachments(files), edited_timestamp=_now())
        return message

    # ---- REST routes -----------------------------------------------------------------------------------
    async def _unknown(self, request: web.Request, rec: RecordedRequest) -> Any:
        self.unknown_requests.append(rec)
        raise _ApiError(0, status=404, message="404: Not Found")

    async def _users_me(self, request: web.Request, rec: RecordedRequest) -> Any:
        return self.bot_user.payload()

    async def _gateway_bot(self, request: web.Request, rec: RecordedRequest) -> Any:
        """The gateway URL and recommended shard count (what AutoSharded clients ask before connecting)."""
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": self.max_concurrency}
        return {"url": f"ws://127.0.0.1:{self.port}/gateway", "shards": self.shard_count, "session_start_limit": limit}

    async def _application(self, request: web.Request, rec: RecordedRequest) -> Any:
        return {"id": str(self.application_id), "name": self.bot_user.name, "description": "", "icon": None,
                "bot_public": True, "bot_require_code_grant": False, "owner": self.owner.payload(),
                "verify_key": "0" * 64, "flags": 0, "team": None, "bot": self.bot_user.payload()}  # fmt: skip

    def _scope(self, request: web.Request) -> int | None:
        if request.match_info["app"] != str(self.application_id):
            raise _ApiError(50001)
        guild = request.match_info.get("guild")
        if guild is not None and int(guild) not in self.guilds:
            raise _ApiError(50001)
        return None if guild is None else int(guild)

    async def _get_commands(self, request: web.Request, rec: RecordedRequest) -> Any:
        return self.commands.get(self._scope(request), [])

    async def _sync_commands(self, request: web.Request, rec: RecordedRequest) -> Any:
        scope = self._scope(request)
        old = {c["name"]: c["id"] for c in self.commands.get(scope, [])}
        synced = [
            {
                **c,
                "id": old.get(c["name"]) or str(self.new_id()),
                "application_id": str(self.application_id),
                "version": str(self.new_id()),
            }
            | ({"guild_id": str(scope)} if scope else {})
            for c in rec.json
        ]
        self.commands[scope] = synced
        return synced

    async def _callback(self, request: web.Request, rec: RecordedRequest) -> Any:
        ix = self._interactions.get(request.match_info["token"])
        if ix is None or request.match_info["iid"] != str(ix.id) or ix.expired:
            raise _ApiError(10062)
        if ix.acked:
            raise _ApiError(40060)
        kind, data = (rec.json or {}).get("type"), rec.data
        if kind not in (4, 5, 6, 7, 8, 9) or (kind in (6, 7) and ix.component_message_id is None):
            raise _ApiError(50035, errors={"type": {"_errors": [{"code": "BASE_TYPE_CHOICES"}]}})
        self._check_files(rec, ix.size_limit)
        ix.acked = True
        flags = int(data.get("flags") or 0) & EPHEMERAL
        message: Json | None = None
        if kind in (4, 5):
            message = self._create_interaction_message(ix, data, rec.files, flags | (LOADING if kind == 5 else 0))
            ix.original_id, ix.loading = int(message["id"]), kind == 5
        elif ix.component_message_id is not None:  # 6 and 7 answer a click: @original is the clicked message
            ix.original_id = ix.component_message_id
            if kind == 7:
                message = self._edit_message(self.messages[ix.component_message_id], data, rec.files)
        interaction = {"id": str(ix.id), "type": ix.kind, "response_message_loading": kind == 5,
                       "response_message_ephemeral": bool(flags)}  # fmt: skip
        resource: Json = {"type": kind}
        if message is not None:
            interaction["response_message_id"], resource["message"] = message["id"], message
        return {"interaction": interaction, "resource": resource}

    async def _followup(self, request: web.Request, rec: RecordedRequest) -> Any:
        ix = self._interaction_for_webhook(request)
        if not ix.acked:
            raise _ApiError(10015)
        self._check_files(rec, ix.size_limit)
        body = rec.json or {}
        # After a defer, the first follow-up *is* the original (unless the bot deleted it: then it is a new message).
        if ix.loading and ix.original_id is not None and ix.original_id not in self.deleted_messages:
            ix.loading = False
            message = self._edit_message(self.messages[ix.original_id], body, rec.files)
            message["flags"] &= ~LOADING
        else:
            message = self._create_interaction_message(ix, body, rec.files, int(body.get("flags") or 0) & EPHEMERAL)
        return message if rec.query.get("wait") in ("1", "true", "True") else None

    async def _webhook_message(self, request: web.Request, rec: RecordedRequest) -> Any:
        ix = self._interaction_for_webhook(request)
        mid_text = request.match_info["mid"]
        mid = ix.original_id if mid_text == "@original" else int(mid_text)
        owned = ix.message_ids | ({ix.original_id} if ix.original_id is not None else set())
        if mid is None or mid not in owned or mid in self.deleted_messages:
            raise _ApiError(10008)
        if request.method == "DELETE":
            self.deleted_messages.add(mid)
            return None
        if request.method == "PATCH":
            self._check_files(rec, ix.size_limit)
            self._edit_message(self.messages[mid], rec.json or {}, rec.files)
            if mid == ix.original_id and ix.loading:
                ix.loading = False
                self.messages[mid]["flags"] &= ~LOADING
        return self.messages[mid]

    def _find_channel(self, request: web.Request) -> FakeChannel:
        channel = next(
            (c for g in self.guilds.values() for c in g.channels if str(c.id) == request.match_info["cid"]), None
        )
        if channel is None:
            raise _ApiError(10003)
        return channel

    async def _get_channel(self, request: web.Request, rec: RecordedRequest) -> Any:
        return self._find_channel(request).payload()

    async def _channel_message(self, request: web.Request, rec: RecordedRequest) -> Any:
        channel = self._find_channel(request)
        if request.method == "POST":
            self._check_files(rec, DEFAULT_ATTACHMENT_LIMIT)
            return self._create_message(channel.id, rec.json or {}, rec.files)
        mid = int(request.match_info["mid"])
        message = self.messages.get(mid)
        if message is None or message["channel_id"] != str(channel.id) or mid in self.deleted_messages:
            raise _ApiError(10008)
        if request.method == "DELETE":
            self.deleted_messages.add(mid)
            return None
        if request.method == "PATCH":
            self._check_files(rec, DEFAULT_ATTACHMENT_LIMIT)
            self._edit_message(message, rec.json or {}, rec.files)
        return message

    def hold_attachment(self, attachment: Json) -> asyncio.Event:
        """Serve this attachment (from `member_upload`) only once the returned event is set: a slow CDN."""
        release = asyncio.Event()
        self._attachment_gates[int(attachment["id"])] = release
        return release

    async def wait_for_download(self, attachment: Json) -> None:
        """Until the bot has asked the CDN for this attachment."""
        await self._wait(lambda: int(attachment["id"]) in self.attachment_downloads, "the attachment's download")

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        aid = int(request.match_info["aid"])
        f = self.attachments.get(aid)
        if f is None:
            raise web.HTTPNotFound()
        self.attachment_downloads.append(aid)
        await self._notify()
        gate = self._attachment_gates.get(aid)
        if gate is not None:
            await gate.wait()
        return web.Response(body=f.data, headers={"Content-Type": f.content_type})


def attachment_option(name: str, attachment: Json) -> tuple[Json, Json]:
    """The option (type 11) and the `resolved` data of an attachment made with `member_upload`."""
    return {"name": name, "type": 11, "value": attachment["id"]}, {"attachments": {attachment["id"]: attachment}}


def _option(name: str, value: Any) -> Json:
    """A slash-command option with its type inferred from the Python value."""
    types = ((bool, 5), (int, 4), (float, 10), (str, 3))  # bool before int: bool is an int
    kind = next((t for py, t in types if isinstance(value, py)), None)
    if kind is None:
        raise TypeError(f"option {name!r}: cannot infer a Discord option type for {value!r}; pass a list of dicts")
    return {"name": name, "type": kind, "value": value}


def _buttons(*custom_ids: str) -> list[Json]:
    """One action row of buttons with these custom ids (what a crafted client claims a message has)."""
    buttons = [{"type": 2, "style": 2, "label": "button", "custom_id": custom_id} for custom_id in custom_ids]
    return [{"type": 1, "components": buttons}]


def _walk(components: list[Json]) -> Iterator[Json]:
    for component in components:
        yield component
        yield from _walk(
            component.get("components", []) + ([component["accessory"]] if "accessory" in component else [])
        )


@contextlib.asynccontextmanager
async def running_fake(**options: Any) -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord with discord.py pointed at it; fails if the bot hit an unknown route."""
    fake = FakeDiscord(**options)
    await fake.start()
    try:
        with fake.patch_discord():
            yield fake
    finally:
        await fake.stop()
    fake.assert_no_unknown_routes()


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """The fake Discord for one test (see running_fake)."""
    async with running_fake() as fake:
        yield fake
