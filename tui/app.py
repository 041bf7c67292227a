"""The Onlooker terminal UI (Textual): live preview, chat, transcript, timeline, status.

The app never calls the model and imports no other project package (but model.chunk's time format).
It talks to a session (tui.protocol.SessionView) that runs in its own threads: questions and commands go in through
`session.ask` / `session.command`, event records come back through `post` (marshalled onto the UI
thread with call_from_thread), and the status bar and preview poll snapshots the other threads leave
behind. If the session dies, the app shows its error and exits 1.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, ListItem, ListView, RichLog, Static

from model.chunk import format_time, without_frames
from tui.protocol import SessionView
from tui.render import half_blocks

HELP = """\
[b]Onlooker[/b] watches the stream, remembers it, and answers.

[b]Ask[/b]        type a question and press Enter ("What did the sign say at 0:12?")
[b]/watch[/b] C   tell me when C happens ('/watch the sign says "STOP"')
[b]/unwatch[/b]   stop all standing instructions (or /unwatch C for one)
[b]/search[/b] T  find moments in memory by words or time
[b]/mute[/b]      speech output on/off
[b]/help[/b]      this screen        [b]/quit[/b]  leave

[b]Keys[/b]  F1 help · Ctrl+T timeline · A ask about the selected segment · Ctrl+Q quit
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(HELP, markup=True)
            yield Label("Esc closes", classes="dim")


class SegmentItem(ListItem):
    """One sealed segment in the timeline: its caption when the model wrote one, else its text (on the VLM
    path, the frame placeholders left out: what the perceivers read)."""

    def __init__(self, t0: float, t1: float, text: str) -> None:
        self.t0, self.t1, self.text = t0, t1, text
        self.label = Label(self._line(text))
        super().__init__(self.label)

    def _line(self, text: str) -> str:
        shown = without_frames(text) or text
        return f"{format_time(self.t0)}–{format_time(self.t1)}  {shown[:60]}"

    def add_caption(self, caption: str) -> None:
        self.text = f"{self.text} Caption: {caption}"
        self.label.update(self._line(f"Caption: {caption}"))


class OnlookerApp(App[int]):
    TITLE = "Onlooker"
    CSS = """
    #left { width: 2fr; }
    #right { width: 3fr; }
    #preview { height: 20; border: round $accent; }
    #timeline { height: 1fr; border: round $secondary; }
    #detail { height: 8; border: round $secondary; }
    #chat { height: 2fr; border: round $primary; }
    #transcript { height: 1fr; border: round $secondary; }
    #status { height: 1; background: $boost; }
    #help { width: 80; height: auto; padding: 1 2; border: thick $accent; background: $surface; }
    HelpScreen { align: center middle; }
    .dim { color: $text-muted; }
    """
    BINDINGS = [Binding("ctrl+q", "quit", "Quit"), Binding("f1", "help", "Help"),
                Binding("ctrl+t", "focus_timeline", "Timeline"), Binding("a", "ask_segment", "Ask about segment",
                                                                         show=False)]

    def __init__(self, session: SessionView, preview_hz: float = 8.0) -> None:
        super().__init__()
        self.session = session
        self.preview_hz = preview_hz
        self.preview_updates = 0
        self._answer: dict[int, str] = {}
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="left"):
                yield Static(id="preview")
                yield ListView(id="timeline")
                yield Static("select a segment (Ctrl+T)", id="detail")
            with Vertical(id="right"):
                yield RichLog(id="chat", wrap=True, markup=False)
                yield RichLog(id="transcript", wrap=True, markup=False)
                yield Input(placeholder="Ask about the stream, or /help", id="ask")
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#preview").border_title = "live"
        self.query_one("#timeline").border_title = "timeline"
        self.query_one("#chat").border_title = "chat"
        self.query_one("#transcript").border_title = "heard"
        self.query_one("#ask", Input).focus()
        self.set_interval(1 / self.preview_hz, self.refresh_preview)
        self.set_interval(0.5, self.refresh_status)
        self.session.start(self.post)
        self.refresh_status()

    # -- from the session's threads -------------------------------------------------------------
    def post(self, event: dict[str, Any]) -> None:
        try:
            self.call_from_thread(self.handle, event)
        except RuntimeError:        # the app is closing
            pass

    def handle(self, event: dict[str, Any]) -> None:
        chat = self.query_one("#chat", RichLog)
        kind = event.get("type")
        if kind == "token":
            qid = event["question_id"]
            self._answer[qid] = self._answer.get(qid, "") + event["text"]
        elif kind == "answer":
            self._answer.clear()
            chat.write(Text.assemble(("Onlooker: ", "bold green"), event["text"],
                                     (f"  [{format_time(event['t'])} · {event['ttft_ms']:.0f} ms to first token]",
                                      "dim")))
        elif kind == "alert":
            chat.write(Text.assemble(("ALERT ", "bold white on red"), (f"({event['condition']}) ", "bold red"),
                                     event["text"]))
        elif kind == "transcript":
            self.query_one("#transcript", RichLog).write(f"[{format_time(event['t0'])}] {event['text']}")
        elif kind == "segment_sealed":
            self._add_segment(event["t0"], event["t1"], event["text"])
        elif kind == "caption":
            for item in self.query_one("#timeline", ListView).query(SegmentItem):
                if item.t0 == event["t0"]:
                    item.add_caption(event["text"])
        elif kind == "question":
            chat.write(Text.assemble(("you: ", "bold cyan"), event["question"],
                                     (f"  [{format_time(event['t'])}]", "dim")))
        elif kind == "search":
            lines = [f"{format_time(r['t0'])}–{format_time(r['t1'])}  {r['text']}" for r in event["results"]]
            chat.write(Text(f"search {event['query']!r}:\n" + ("\n".join(lines) or "  nothing found"),
                            style="yellow"))
        elif kind == "command":
            chat.write(Text(f"/{event['kind']} {event['arg']}".strip() + f" → watching: "
                            f"{', '.join(event['watches']) or 'nothing'}; muted: {event['muted']}", style="dim"))
        elif kind == "interrupted":
            chat.write(Text("(interrupted)", style="dim"))
        elif kind == "narration":
            chat.write(Text(event["text"], style="italic"))
        elif kind == "session_error":
            self.fail(event["error"])
        elif kind == "session_ended":
            chat.write(Text(f"stream ended: {event.get('summary', '')}", style="dim"))

    def fail(self, error: str) -> None:
        self.error = error
        self.query_one("#chat", RichLog).write(Text(f"error: {error}", style="bold red"))
        self.set_timer(2.0, lambda: self.exit(1, return_code=1))

    def _add_segment(self, t0: float, t1: float, text: str) -> None:
        self.query_one("#timeline", ListView).append(SegmentItem(t0, t1, text))

    # -- polling --------------------------------------------------------------------------------
    def refresh_preview(self) -> None:
        found = self.query("#preview")  # a tick may land while the app tears its widgets down
        if not found:
            return
        preview = found.first(Static)
        w, h = preview.content_size.width, preview.content_size.height
        preview.update(half_blocks(self.session.latest_frame(), w, h))
        self.preview_updates += 1

    def refresh_status(self) -> None:
        found = self.query("#status")
        if not found:
            return
        s = self.session.status()

        def mb(k: str) -> str:
            return f"{s[k]:.0f}" if s.get(k) is not None else "-"
        kept = f"{s['kept_pct']:.0f}%" if s.get("kept_pct") is not None else "-"
        behind = s.get("frames_dropped_behind") or 0
        ttft = f"{s['ttft_ms']:.0f} ms" if s.get("ttft_ms") is not None else "-"
        mic = s.get("mic_level")
        mic_s = "off" if mic is None else "▁▂▃▄▅▆▇█"[min(7, int(mic * 8))]
        line = (f" {s.get('source', '')} · {s.get('model', '')} · {format_time(s.get('stream_t', 0.0))} · "
                f"{s.get('ingest_fps', 0.0):.1f} fps · dropped {s.get('frames_dropped', 0) + behind} · "
                f"tokens kept {kept} · "
                f"KV {mb('device_mb')}/{mb('host_mb')}/{mb('disk_mb')} MB · TTFT {ttft} · "
                f"{s.get('state', 'starting')}{' (muted)' if s.get('muted') else ''} · mic {mic_s}")
        found.first(Static).update(line)
        if s.get("error") and self.error is None:  # the session died without an event reaching us
            self.fail(s["error"])

    # -- input ----------------------------------------------------------------------------------
    def on_input_submitted(self, message: Input.Submitted) -> None:
        text = message.value.strip()
        message.input.value = ""
        if not text:
            return
        if not text.startswith("/"):
            self.session.ask(text)
            return
        cmd, _, arg = text[1:].partition(" ")
        arg = arg.strip()
        if cmd == "help":
            self.action_help()
        elif cmd == "quit":
            self.exit(0)
        elif cmd in ("watch", "search") and not arg:
            self.query_one("#chat", RichLog).write(Text(f"usage: /{cmd} TEXT", style="yellow"))
        elif cmd in ("watch", "unwatch", "search", "mute"):
            self.session.command(cmd, arg)
        else:
            self.query_one("#chat", RichLog).write(Text(f"unknown command /{cmd}; /help lists them", style="yellow"))

    def on_list_view_highlighted(self, message: ListView.Highlighted) -> None:
        item = message.item
        if isinstance(item, SegmentItem):
            detail = self.query_one("#detail", Static)
            thumb = half_blocks(self.session.frame_at(item.t0), 24, 6)
            detail.update(Text.assemble(thumb, "\n", (f"{format_time(item.t0)}–{format_time(item.t1)}  ", "bold"),
                                        item.text))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_focus_timeline(self) -> None:
        self.query_one("#timeline", ListView).focus()

    def action_ask_segment(self) -> None:
        timeline = self.query_one("#timeline", ListView)
        item = timeline.highlighted_child
        if self.focused is timeline and isinstance(item, SegmentItem):
            ask = self.query_one("#ask", Input)
            ask.value = f"What happened at {format_time(item.t0)}?"
            ask.focus()

    def on_unmount(self) -> None:
        self.session.stop()
