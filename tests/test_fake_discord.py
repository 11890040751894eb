"""End-to-end tests of the real discord.py client against the fake Discord in tests/fake.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fake_discord import (  # noqa: F401
    CommandUnavailable,
    FakeDiscord,
    RecordedRequest,
    fake_discord,
)

RERUN_ID = "stepgrid:rerun"


def tiny_png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class RerunView(discord.ui.View):
    """A persistent view: no timeout and a fixed custom_id, registered in setup_hook."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Re-run", style=discord.ButtonStyle.primary, custom_id=RERUN_ID)
    async def rerun(self, interaction: discord.Interaction, button: discord.ui.Button[RerunView]) -> None:
        await interaction.response.send_message(f"re-run queued by {interaction.user.name}", ephemeral=True)


settings = app_commands.Group(
    name="settings", description="Bot settings", default_permissions=discord.Permissions(manage_guild=True)
)
limits = app_commands.Group(name="limits", description="Limits", parent=settings)


@settings.command(name="show", description="Show the settings")
async def settings_show(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("steps=30", ephemeral=True)


@limits.command(name="set", description="Set a limit")
async def limits_set(interaction: discord.Interaction, name: str, value: int) -> None:
    await interaction.response.send_message(f"{name}={value}", ephemeral=True)


class SmokeBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned, intents=discord.Intents.default(), guild_ready_timeout=0.05
        )
        self.release = asyncio.Event()  # lets a test hold /slow until it has expired the token

    async def setup_hook(self) -> None:
        self.add_view(RerunView())
        self.tree.add_command(settings)
        self.tree.add_command(app_commands.Command(name="render", description="Render", callback=render))
        self.tree.add_command(app_commands.Command(name="panel", description="Panel", callback=panel))
        self.tree.add_command(app_commands.Command(name="slow", description="Slow", callback=slow))
        await self.tree.sync()


async def render(interaction: discord.Interaction, prompt: str, steps: int = 20) -> None:
    await interaction.response.defer(thinking=True)
    embed = discord.Embed(title=prompt, description=f"{steps} steps").set_image(url="attachment://grid.png")
    try:
        await interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(tiny_png()), "grid.png"))
    except discord.HTTPException as exc:
        if exc.code != 40005:
            raise
        await interaction.edit_original_response(content="the image is too large for this server")
        return
    await interaction.edit_original_response(content=f"done: {prompt}")


async def panel(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("Grid ready", view=RerunView())


async def slow(interaction: discord.Interaction) -> None:
    await interaction.response.defer()
    bot = interaction.client
    assert isinstance(bot, SmokeBot)
    await bot.release.wait()
    try:
        await interaction.followup.send(file=discord.File(io.BytesIO(tiny_png()), "late.png"))
    except discord.HTTPException:  # the interaction token is only valid for 15 minutes
        assert isinstance(interaction.channel, discord.TextChannel)
        # a new File: discord.py has consumed and closed the first one
        file = discord.File(io.BytesIO(tiny_png()), "late.png")
        await interaction.channel.send(f"{interaction.user.mention} your grid is ready", file=file)


@pytest.fixture
def fake(fake_discord: FakeDiscord) -> FakeDiscord:  # noqa: F811 (the shared fixture imported above)
    return fake_discord


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[SmokeBot]:
    bot = SmokeBot()
    task = asyncio.create_task(bot.start(fake.token))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 5)
        yield bot
    finally:
        await bot.close()
        await task


async def test_render_defers_then_sends_png_followup_then_edits_original(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("render", {"prompt": "a red fox", "steps": 30})

    edit = await handle.wait_for_edit()
    assert [r.json["type"] for r in handle.callbacks] == [5]
    assert handle.requests.index(handle.callbacks[0]) < handle.requests.index(handle.followups[0])
    followup = handle.followups[0]
    assert followup.ok and followup.files[0].filename == "grid.png"
    assert followup.files[0].data == tiny_png()
    assert followup.json["embeds"][0]["title"] == "a red fox"
    assert edit.json["content"] == "done: a red fox"
    assert handle.final_files()[0].data.startswith(b"\x89PNG")
    original = handle.original_message
    assert original is not None and original["content"] == "done: a red fox" and not original["flags"]
    assert original["attachments"][0]["filename"] == "grid.png"
    fake.assert_no_unknown_routes()


async def test_subcommand_in_group_reaches_the_callback(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("settings", {"name": "steps", "value": 50}, subcommand="limits set", user=fake.admin)
    callback = await handle.wait_for_callback()
    assert callback.json["type"] == 4 and callback.ephemeral
    assert callback.data["content"] == "steps=50"
    shown = await fake.invoke("settings", subcommand="show", user=fake.admin)
    assert (await shown.wait_for_callback()).data["content"] == "steps=30"


async def test_admin_command_is_not_offered_to_a_normal_member(fake: FakeDiscord, bot: SmokeBot) -> None:
    with pytest.raises(CommandUnavailable):
        await fake.invoke("settings", subcommand="show", user=fake.member)


async def test_persistent_button_click_is_handled(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("panel")
    await handle.wait_for_callback()
    message = handle.original_message
    assert message is not None and message["content"] == "Grid ready"

    click = await fake.click(message, RERUN_ID, user=fake.admin)
    answer = await click.wait_for_callback()
    assert answer.ok and answer.ephemeral
    assert answer.data["content"] == "re-run queued by root"


async def test_oversized_attachment_gets_40005(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("render", {"prompt": "huge"}, attachment_size_limit=64)
    rejected = await handle.wait_for(lambda r: r.is_followup)
    assert rejected.status == 413 and rejected.error_code == 40005
    edit = await handle.wait_for_edit()
    assert edit.json["content"] == "the image is too large for this server"


async def test_expired_token_falls_back_to_posting_in_the_channel(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("slow")
    await handle.wait_for_callback()
    fake.expire_token(handle)
    bot.release.set()

    rejected = await handle.wait_for_followup()
    assert rejected.status == 401 and rejected.error_code == 50027
    posted = await fake.wait_for_request(lambda r: r.method == "POST" and r.path.startswith("/channels/"))
    assert posted.ok and posted.path == f"/channels/{fake.channel.id}/messages"
    assert posted.files[0].data == tiny_png()
    assert f"<@{fake.member.id}>" in posted.json["content"]


async def test_reconnect_resumes_the_session(fake: FakeDiscord, bot: SmokeBot) -> None:
    first = await fake.wait_until_ready()
    resumed = await fake.force_reconnect()
    assert resumed.resumed and resumed.session_id == first.session_id
    assert resumed.path == "/gateway-resume" and fake.identify_count == 1

    handle = await fake.invoke("panel")
    assert (await handle.wait_for_callback()).ok


async def test_rate_limited_followup_is_retried(fake: FakeDiscord, bot: SmokeBot) -> None:
    fake.simulate_rate_limit(f"POST /webhooks/{fake.application_id}/", retry_after=0.01)
    handle = await fake.invoke("render", {"prompt": "fox"})
    await handle.wait_for_edit()
    assert [r.status for r in handle.followups] == [429, 200]


async def test_bad_token_raises_login_failure(fake: FakeDiscord) -> None:
    bot = SmokeBot()
    try:
        with pytest.raises(discord.LoginFailure):
            await bot.start("not-the-token")
    finally:
        await bot.close()


async def test_rotated_token_is_closed_with_4004_at_identify(fake: FakeDiscord) -> None:
    bot = SmokeBot()
    try:
        await bot.login(fake.token)
        fake.rotate_token()
        with pytest.raises(discord.ConnectionClosed) as closed:
            await bot.connect()
        assert closed.value.code == 4004
    finally:
        await bot.close()


async def test_rest_errors_are_discords(fake: FakeDiscord, bot: SmokeBot) -> None:
    handle = await fake.invoke("panel")
    await handle.wait_for_callback()
    base, app = fake.base_url + "/api/v10", fake.application_id

    async def call(method: str, path: str, **kwargs: object) -> tuple[int, int]:
        async with aiohttp.ClientSession() as session, session.request(method, base + path, **kwargs) as resp:  # type: ignore[arg-type]
            assert resp.headers["Content-Type"] == "application/json"
            return resp.status, (await resp.json())["code"]

    assert await call("POST", f"/interactions/{handle.id}/{handle.token}/callback", json={"type": 5}) == (400, 40060)
    assert await call("POST", f"/interactions/{handle.id}/nope/callback", json={"type": 5}) == (404, 10062)
    assert await call("POST", f"/webhooks/{app}/nope?wait=1", json={"content": "x"}) == (404, 10015)
    assert await call("GET", f"/webhooks/{app}/{handle.token}/messages/1") == (404, 10008)
    assert await call("GET", "/users/@me", headers={"Authorization": "Bot nope"}) == (401, 0)
    unknown: list[RecordedRequest] = fake.unknown_requests
    assert await call("GET", "/guilds/1/bans") == (404, 0)
    assert [r.path for r in unknown] == ["/guilds/1/bans"]
    unknown.clear()
