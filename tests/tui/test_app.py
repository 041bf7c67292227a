"""The TUI against a fake session: Textual's pilot drives it like a user; snapshots pin the screens."""

from __future__ import annotations

import asyncio

from textual.widgets import Input, ListView, RichLog, Static

from tests.tui.fake import FakeSession
from tui.app import HelpScreen, OnlookerApp

SIZE = (140, 44)


async def _until(pilot, cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def _chat(app) -> str:
    return "\n".join(str(line.text) for line in app.query_one("#chat", RichLog).lines)


async def _type(pilot, text: str) -> None:
    await pilot.click("#ask")
    for ch in text:
        await pilot.press(ch if ch != " " else "space")
    await pilot.press("enter")


def test_asking_a_question_streams_the_answer_with_its_latency():
    async def run():
        session = FakeSession()
        app = OnlookerApp(session)
        async with app.run_test(size=SIZE) as pilot:
            await _type(pilot, "What is on the sign?")
            await _until(pilot, lambda: "Onlooker: The sign reads RIVER." in _chat(app))
            assert session.submitted[0] == ("ask", "What is on the sign?")
            assert "you: What is on the sign?" in _chat(app) and "120 ms to first token" in _chat(app)
            assert app.query_one("#ask", Input).value == ""
        assert session.stopped

    asyncio.run(run())


def test_timeline_selects_a_segment_and_asks_about_it():
    async def run():
        app = OnlookerApp(FakeSession())
        async with app.run_test(size=SIZE) as pilot:
            timeline = app.query_one("#timeline", ListView)
            await _until(pilot, lambda: len(timeline.children) == 2)
            await pilot.press("ctrl+t")
            await pilot.press("down")                    # the first segment
            await _until(pilot, lambda: "APPLE" in str(app.query_one("#detail", Static).render()))
            await pilot.press("down")                    # the second
            await _until(pilot, lambda: "RIVER" in str(app.query_one("#detail", Static).render()))
            assert "0:04–0:08" in str(app.query_one("#detail", Static).render())
            await pilot.press("a")
            assert app.query_one("#ask", Input).value == "What happened at 0:04?"

    asyncio.run(run())


def test_commands_watch_unwatch_search_mute_help_quit():
    async def run():
        session = FakeSession()
        app = OnlookerApp(session)
        async with app.run_test(size=SIZE) as pilot:
            await _type(pilot, '/watch the sign says "STOP"')
            await _until(pilot, lambda: "ALERT" in _chat(app))
            assert 'watching: the sign says "STOP"' in _chat(app)
            await _type(pilot, "/unwatch")
            await _type(pilot, "/search river")
            await _until(pilot, lambda: "search 'river'" in _chat(app))
            await _type(pilot, "/mute")
            await _type(pilot, "/bogus")
            await _until(pilot, lambda: "unknown command /bogus" in _chat(app))
            kinds = [c for c in session.submitted if c[0] != "ask"]
            assert kinds == [("watch", 'the sign says "STOP"'), ("unwatch", ""), ("search", "river"), ("mute", "")]
            await _type(pilot, "/help")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("f1")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await _type(pilot, "/quit")
        assert app.return_code == 0

    asyncio.run(run())


def test_transcript_status_and_preview_update():
    async def run():
        app = OnlookerApp(FakeSession())
        async with app.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: app.query_one("#transcript", RichLog).lines)
            assert "noon" in str(app.query_one("#transcript", RichLog).lines[0].text)
            status = str(app.query_one("#status", Static).render())
            assert "synthetic:short" in status and "TTFT 120 ms" in status and "listening" in status
            start, t0 = app.preview_updates, asyncio.get_running_loop().time()
            await pilot.pause(2.0)
            rate = (app.preview_updates - start) / (asyncio.get_running_loop().time() - t0)
            assert rate >= 5, rate                               # at least 5 updates a second

    asyncio.run(run())


def test_a_dying_session_shows_its_error_and_exits_1():
    async def run():
        app = OnlookerApp(FakeSession(fail_after_start="runtime failed: boom"))
        async with app.run_test(size=SIZE) as pilot:
            await _until(pilot, lambda: "error: runtime failed: boom" in _chat(app))
            await _until(pilot, lambda: app.return_code is not None, timeout=5)
        assert app.return_code == 1

    asyncio.run(run())


class _StableIds(OnlookerApp):
    """The app as it is, screenshotted with a fixed SVG id and the input's cursor not blinking: whether the
    screenshot caught the cursor on or off made the comparison flaky."""

    def on_mount(self) -> None:          # Textual runs OnlookerApp.on_mount too (handlers run down the MRO)
        self.query_one("#ask", Input).cursor_blink = False

    def export_screenshot(self, *, title: str | None = None, simplify: bool = False) -> str:
        import io

        from rich.console import Console
        width, height = self.size
        console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                          color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
        console.print(self.screen._compositor.render_update(full=True, screen_stack=self.app._background_screens,
                                                            simplify=simplify))
        return console.export_svg(title=title or self.title, unique_id="terminal-onlooker")


def test_main_screen_snapshot(snap_compare):
    async def settle(pilot):
        await _until(pilot, lambda: len(pilot.app.query_one("#timeline", ListView).children) == 2)
        await pilot.pause(0.3)
    assert snap_compare(_StableIds(FakeSession()), terminal_size=SIZE, run_before=settle)


def test_help_screen_snapshot(snap_compare):
    async def open_help(pilot):
        await pilot.press("f1")
        await pilot.pause(0.2)
    assert snap_compare(_StableIds(FakeSession()), terminal_size=SIZE, run_before=open_help)
