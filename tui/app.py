"""`turbospec top`: the Textual dashboard over one or more NDJSON traces.

Reader threads (tui/reader.py) parse and aggregate; they post a small message per batch and the
screen is rebuilt on a timer (>= 4 Hz) from a snapshot, so a fast writer never floods the UI.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Sparkline, Static, TabbedContent, TabPane

from turbospec.errors import UserError
from turbospec.trace import fmt_pct, fmt_tau
from turbospec.tui.keys import KEYS, keymap_path, load_keymap
from turbospec.tui.model import DEFAULT_WINDOW_ROUNDS, DEFAULT_WINDOW_S, View, next_window, view_of
from turbospec.tui.reader import TraceSource

PATH_NAMES = ("sync", "lazy", "skip-streak", "skip-nsteps")
CATCH_UP_REDRAW_S = 1.0  # while a trace's backlog is being read, redraw it at most once a second


def fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def bar(frac: float | None, width: int) -> str:
    if frac is None:
        return "·" * width
    f = min(max(frac, 0.0), 1.0) * width
    full = int(f)
    return "█" * full + ("▌" if f - full >= 0.5 else "") + "·" * (width - full - (1 if f - full >= 0.5 else 0))


class TraceBatch(Message):
    """Posted by a reader thread after each batch of lines (thread-safe post_message)."""

    def __init__(self, index: int, n_lines: int) -> None:
        super().__init__()
        self.index = index
        self.n_lines = n_lines


class MetricBox(Vertical):
    """A headline: title in the border, 'window / run / peak' values and a sparkline."""

    def __init__(self, title: str, box_id: str) -> None:
        super().__init__(id=box_id, classes="metric")
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield Static("", classes="values")
        yield Sparkline([], summary_function=lambda xs: sum(xs) / len(xs), classes="spark")


class TracePanel(Vertical):
    """Everything about one trace."""

    def __init__(self, source: TraceSource, panel_id: str) -> None:
        super().__init__(id=panel_id, classes="panel")
        self.source = source

    def compose(self) -> ComposeResult:
        yield Static("", classes="hdr")
        with Horizontal(classes="row"):
            yield MetricBox("draft acceptance rate", "acc")
            yield MetricBox("acceptance length τ", "tau")
        with Horizontal(classes="row"):
            yield MetricBox("decode tok/s", "dec")
            yield MetricBox("h_l2 (draft state norm)", "hl2")
        with Horizontal(classes="detail"):
            yield Static("", classes="box pos")
            yield Static("", classes="box paths")
            yield Static("", classes="box misc")
        yield Static("", classes="status")

    def on_mount(self) -> None:
        titles = {"pos": "per-position acceptance p_i", "paths": "draft paths", "misc": "tokens · time"}
        for cls, title in titles.items():
            self.query_one(f".{cls}", Static).border_title = title

    def show(self, v: View, paused: bool) -> None:  # noqa: C901
        m = v.metrics
        h = m["header"]
        src = self.source
        unit = "s" if v.clocked else "rounds"
        wlabel = f"{v.window:g} {unit}"
        # run header
        if h:
            parts = [f"B={h.get('draft_block_size', m['block_size'] or '?')}",
                     f"depth {h.get('pipeline_depth', '?')}",
                     f"K {h.get('type_k', '?')} V {h.get('type_v', '?')}",
                     f"KV {fmt_bytes(m['kv_bytes'])}",
                     f"{h.get('backend', '?')}/{h.get('device', '?')}", str(h.get("model", "?"))]
            if m["end"]:
                parts.append(f"run {m['end'].get('status', '?')}")
            hdr = " · ".join(parts)
        else:
            hdr = f"fork trace (no run header) · B={m['block_size'] or '?'}"
        self.query_one(".hdr", Static).update(Text(hdr, overflow="ellipsis", no_wrap=True))

        def triple(box: str, name: str, t: Any, fmt: Any, spark: list[float], note: str = "") -> None:
            txt = Text()
            txt.append(f"{fmt(t.window)}", style="bold")
            txt.append(" now  ", style="dim")
            txt.append(f"{fmt(t.run)}", style="bold")
            txt.append(" run  ", style="dim")
            txt.append(f"{fmt(t.peak)}", style="bold")
            txt.append(" peak", style="dim")
            w = self.query_one(f"#{box}", MetricBox)
            w.border_title = f"{name} {fmt(t.window)}"  # asitop-style: the live value in the title
            w.border_subtitle = f"{note} · {wlabel} window" if note else f"{wlabel} window"
            w.query_one(".values", Static).update(txt)
            w.query_one(Sparkline).data = spark

        triple("acc", "draft acceptance rate", v.acceptance, fmt_pct, v.spark_acceptance)
        triple("tau", "acceptance length τ", v.tau, fmt_tau, v.spark_tau)
        triple("dec", "decode tok/s", v.decode, fmt_rate, v.spark_decode,
               "trace clock" if v.clocked else "from arrival time")
        hl = m["h_l2"]
        hbox = self.query_one("#hl2", MetricBox)
        htxt = Text()
        if hl["n"]:
            htxt.append(f"{hl['last']:.1f}", style="bold")
            htxt.append(" last  ", style="dim")
            htxt.append(f"{hl['mean']:.1f}", style="bold")
            htxt.append(" mean  ", style="dim")
            htxt.append(f"{hl['min']:.0f}–{hl['max']:.0f}", style="bold")
        else:
            htxt.append("—", style="dim")
        hbox.query_one(".values", Static).update(htxt)
        hbox.query_one(Sparkline).data = v.spark_h_l2

        # per-position acceptance for the current block size, then the accepted-length histogram
        pos_w = self.query_one(".pos", Static).content_size.width or 30
        with_alpha = pos_w >= 30
        bw = min(48, max(4, pos_w - (20 if with_alpha else 11)))
        bs = h.get("draft_block_size") if isinstance(h.get("draft_block_size"), int) else m["block_size"]
        n_pos = (bs - 1) if isinstance(bs, int) and bs > 1 else len(m["per_position"])
        pos = Text()
        for i in range(n_pos):
            p = m["per_position"][i] if i < len(m["per_position"]) else None
            a = m["conditional"][i] if i < len(m["conditional"]) else None
            pos.append(f"p{i:<2}")
            pos.append(bar(p, bw), style="green")
            pos.append(f" {fmt_pct(p):>6}")
            if with_alpha:
                pos.append(f" α {fmt_pct(a):>6}", style="dim")
            pos.append("\n")
        hist = m["accepted_hist"]
        tot = sum(hist) or 1
        if hist:
            pos.append("accepted length, share of rounds\n"[: max(pos_w, 1)].rstrip() + "\n", style="dim")
        for i, c in enumerate(hist):
            pos.append(f"{i:<3}")
            pos.append(bar(c / tot, bw), style="cyan")
            pos.append(f" {fmt_pct(c / tot):>6}\n")
        self.query_one(".pos", Static).update(pos if n_pos or hist else Text("—", style="dim"))

        paths = m["paths"]
        ptot = sum(paths.values()) or 1
        pw = self.query_one(".paths", Static).content_size.width or 26
        cw = max(3, len(str(max(paths.values(), default=0))), pw - 19)
        pt = Text()
        for p in list(PATH_NAMES) + sorted(set(paths) - set(PATH_NAMES)):
            c = paths.get(p, 0)
            pt.append(f"{p:<11} {c:>{cw}} {fmt_pct(c / ptot if paths else None):>6}\n")
        self.query_one(".paths", Static).update(pt)

        mt = Text()
        mt.append(f"prompt tokens {m['n_prompt']}\ngenerated {m['n_gen']}\n")
        mt.append(f"rounds {m['rounds']}\nskipped {m['skip_rounds']}\n")
        mt.append(f"prefill tok/s {fmt_rate(v.prefill.run)}\n")
        if m["draft_us_mean"] is not None:
            mt.append(f"draft {m['draft_us_mean'] / 1000:.1f} ms\n")
        if m["verify_us_mean"] is not None:
            mt.append(f"verify {m['verify_us_mean'] / 1000:.1f} ms\n")
        mt.append(f"malformed lines {m['malformed_lines']}", style="bold red" if m["malformed_lines"] else "")
        self.query_one(".misc", Static).update(mt)

        st = Text()
        if paused:
            st.append(" PAUSED ", style="reverse bold")
            st.append(" ")
        st.append(f"{src.name}: {src.status}" + ("" if src.caught_up else " (reading backlog)"), style="dim")
        st.append(f" · {m['lines']} lines", style="dim")
        if m["ignored_lines"]:
            st.append(f" · {m['ignored_lines']} non-JSON ignored", style="dim")
        if src.tailer is not None and (src.tailer.rotations or src.tailer.truncations):
            st.append(f" · rotated {src.tailer.rotations} truncated {src.tailer.truncations}", style="dim")
        st.append(f" · window {wlabel} ({v.window_rounds} rounds)", style="dim")
        self.query_one(".status", Static).update(st)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,h", "dismiss", "close")]

    def __init__(self, rows: list[tuple[str, str, str]], keymap_file: str) -> None:
        super().__init__()
        self.rows = rows
        self.keymap_file = keymap_file

    def compose(self) -> ComposeResult:
        t = Text()
        t.append("turbospec top — key bindings\n\n", style="bold")
        t.append(f"{'binding id':<20} {'keys':<28} action\n", style="underline")
        for bid, keys, desc in self.rows:
            t.append(f"{bid:<20} {keys:<28} {desc}\n")
        t.append(f"\nRemap in {self.keymap_file}:\n[keymap]\n\"top.pause\" = \"space,p\"\n", style="dim")
        t.append("\nMetrics: draft acceptance rate = Σ n_accepted / Σ n_drafted; "
                 "τ = 1 + Σ n_accepted / rounds; p_i = P(n_accepted > i | n_drafted > i); α_i = p_i / p_(i-1).\n"
                 "now = current window, run = whole run, peak = best window of the run.", style="dim")
        with VerticalScroll(id="help"):
            yield Static(t)


class TopApp(App[int]):
    CSS_PATH = "top.tcss"
    TITLE = "turbospec top"
    BINDINGS = [Binding(k.keys, k.action, k.description, show=k.show, id=k.id) for k in KEYS]

    def __init__(
        self,
        sources: list[TraceSource],
        *,
        window: float | None = None,
        theme: str = "dark",
        refresh_hz: float = 5.0,
        keymap: dict[str, str] | None = None,
        start_readers: bool = True,
    ) -> None:
        super().__init__()
        self.sources = sources
        self.window_s = window or DEFAULT_WINDOW_S
        self.window_rounds = window or DEFAULT_WINDOW_ROUNDS
        self.refresh_hz = max(refresh_hz, 0.5)
        self.paused = False
        self.compare = False
        self.since: dict[int, int | None] = {s.index: None for s in sources}
        self.dirty: set[int] = {s.index for s in sources}
        self.refreshes = 0
        self._keymap = keymap or {}
        self._start_readers = start_readers
        self._mounted = False
        self._theme_name = "textual-light" if theme == "light" else "textual-dark"
        self._views: dict[int, View] = {}
        self._drawn: dict[int, float] = {}
        self._n_drawn: dict[int, int] = {}

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            for s in self.sources:
                label = os.path.basename(s.name) or s.name
                with TabPane(f"{s.index + 1}:{label}", id=f"tab{s.index}"):
                    yield TracePanel(s, f"panel{s.index}")
        with Vertical(id="compare"):
            yield Static("side-by-side: headline metrics of every trace (now = current window)", classes="hdr")
            yield DataTable(id="cmp", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_resize(self, event: Any) -> None:
        self.screen.set_class(event.size.height >= 40, "-tall")
        self.dirty.update(s.index for s in self.sources)
        self._n_drawn.clear()  # redraw twice with the new widths

    def on_mount(self) -> None:
        self.theme = self._theme_name
        if self._keymap:
            self.set_keymap(self._keymap)
        t = self.query_one("#cmp", DataTable)
        t.add_columns("trace", "acc now", "acc run", "acc peak", "τ now", "τ run", "τ peak",
                      "decode tok/s", "prefill tok/s", "rounds", "malformed")
        self.query_one("#compare").display = False
        self._mounted = True
        if self._start_readers:
            self.start_readers()
        self.dirty.update(s.index for s in self.sources)  # batches read before the mount
        self.set_interval(1.0 / self.refresh_hz, self.refresh_view)
        self.refresh_view(force=True)

    def start_readers(self) -> None:
        """Start the reader threads not started yet. run_dashboard calls this before app.run(), so
        a big trace is parsed while Textual sets up the terminal (about 0.5 s) instead of after it."""
        for s in self.sources:
            if s._thread is None:
                s.start(self._notify_batch)

    def _notify_batch(self, index: int, n_lines: int) -> None:
        # called from a reader thread; before the mount the refresh in on_mount picks the batch up
        if self._mounted:
            self.post_message(TraceBatch(index, n_lines))

    def on_trace_batch(self, msg: TraceBatch) -> None:
        self.dirty.add(msg.index)

    def on_unmount(self) -> None:
        for s in self.sources:
            s.stop()

    # -- refresh ------------------------------------------------------------------------------

    def current_index(self) -> int:
        try:
            active = self.query_one("#tabs", TabbedContent).active
        except NoMatches:  # not composed yet, or shutting down
            return 0
        try:
            return int(active.removeprefix("tab"))
        except ValueError:
            return 0

    def view(self, s: TraceSource) -> View:
        metrics, buckets, clocked = s.snapshot()
        width = self.window_s if clocked else self.window_rounds
        v = view_of(metrics, buckets, clocked, width, self.since.get(s.index))
        self._views[s.index] = v
        return v

    def refresh_view(self, force: bool = False) -> None:
        if self.paused and not force:
            return
        if self.compare:
            if not force and not self.dirty:
                return
            try:
                self._refresh_compare()
            except NoMatches:
                return
            self.dirty.clear()
            self.refreshes += 1
            return
        # the current panel is rebuilt when its trace got lines (or on a resize, a key ...); the
        # first draws are repeated once so that widths measured after layout are used
        i = self.current_index()
        s = self.sources[i]
        now = time.monotonic()
        if not force and i not in self.dirty and self._n_drawn.get(i, 0) >= 2:
            return  # nothing new: an idle dashboard costs no CPU
        if not force and not s.caught_up and now - self._drawn.get(i, 0.0) < CATCH_UP_REDRAW_S:
            return  # reading the backlog: draw less often, leave the CPU to the reader thread
        self._drawn[i] = now
        self._n_drawn[i] = self._n_drawn.get(i, 0) + 1
        self.dirty.discard(i)
        try:
            self.query_one(f"#panel{i}", TracePanel).show(self.view(s), self.paused)
        except NoMatches:  # the panel is not composed yet: the next tick draws it
            self.dirty.add(i)
            return
        self.refreshes += 1  # screens actually drawn (the benchmark's refresh rate)

    def _refresh_compare(self) -> None:
        t = self.query_one("#cmp", DataTable)
        t.clear()
        for s in self.sources:
            v = self.view(s)
            m = v.metrics
            t.add_row(
                os.path.basename(s.name) or s.name,
                fmt_pct(v.acceptance.window), fmt_pct(v.acceptance.run), fmt_pct(v.acceptance.peak),
                fmt_tau(v.tau.window), fmt_tau(v.tau.run), fmt_tau(v.tau.peak),
                fmt_rate(v.decode.run) + ("" if v.clocked else "*"), fmt_rate(v.prefill.run),
                str(m["rounds"]), str(m["malformed_lines"]),
            )

    # -- actions ------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        for s in self.sources:
            (s.paused.set if self.paused else s.paused.clear)()
        self.refresh_view(force=True)

    def action_reset_window(self) -> None:
        for s in self.sources:
            with s.lock:
                self.since[s.index] = s.agg.buckets[-1][0] if s.agg.buckets else None
        self.dirty.update(s.index for s in self.sources)
        self.refresh_view(force=True)
        self.notify("window reset: now and peak start over", timeout=2)

    def action_window(self, direction: int) -> None:
        self.window_s = next_window(self.window_s, True, direction > 0)
        self.window_rounds = next_window(self.window_rounds, False, direction > 0)
        self.dirty.update(s.index for s in self.sources)
        self.refresh_view(force=True)

    def action_switch_trace(self, step: int) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        i = (self.current_index() + step) % len(self.sources)
        tabs.active = f"tab{i}"
        self.dirty.add(i)
        self.call_after_refresh(self.refresh_view, True)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.dirty.add(self.current_index())
        self.call_after_refresh(self.refresh_view, True)

    def action_toggle_compare(self) -> None:
        self.compare = not self.compare
        self.query_one("#tabs").display = not self.compare
        self.query_one("#compare").display = self.compare
        self.dirty.update(s.index for s in self.sources)
        self.refresh_view(force=True)

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def help_rows(self) -> list[tuple[str, str, str]]:
        return [(k.id, self._keymap.get(k.id, k.keys), k.description) for k in KEYS]

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows(), str(keymap_path())))


def make_sources(
    paths: list[str], *, follow: bool = True, replay: bool = False, speed: float = 1.0, stdin_fd: int | None = None
) -> list[TraceSource]:
    if not paths:
        raise UserError("give at least one trace file (or '-' for standard input)")
    if paths.count("-") > 1:
        raise UserError("'-' (standard input) can be given once; pass the other traces as files")
    for p in paths:
        if p != "-" and os.path.isdir(p):
            raise UserError(f"trace path {p!r} is a folder; give the trace file inside it")
        if replay and (p == "-" or not os.path.exists(p)):
            raise UserError(f"--replay needs a finished trace file; {p!r} is not one")
    return [
        TraceSource(p, i, follow=follow, replay=replay, speed=speed, stdin_fd=stdin_fd) for i, p in enumerate(paths)
    ]


def run_dashboard(
    paths: list[str],
    follow: bool = True,
    *,
    replay: bool = False,
    speed: float = 1.0,
    window: float | None = None,
    theme: str = "dark",
    refresh_hz: float = 5.0,
) -> int:
    """Show the dashboard over `paths` until the user quits; returns an exit code.

    `turbospec run --tui` calls this with the trace file its engine is writing (from another
    thread or process): the dashboard follows the file; it never imports the engine.
    """
    keymap = load_keymap()
    make_sources(paths, follow=follow, replay=replay, speed=speed)  # validate before touching the terminal
    stdin_tty = None
    stdin_fd: int | None = None
    if "-" in paths:
        if os.isatty(0):
            raise UserError("'-' reads a trace from a pipe, e.g. `LLAMA_MTP_ACC_TRACE=1 llama-server ... 2>&1 | "
                            "turbospec top -`; give a file path to follow a file")
        # the pipe stays our data source (a dup of fd 0); Textual reads keys from the terminal
        try:
            stdin_tty = open("/dev/tty")  # noqa: SIM115
        except OSError:
            raise UserError("reading a trace from '-' needs a terminal for the dashboard (/dev/tty)") from None
        stdin_fd = os.dup(0)
        os.dup2(stdin_tty.fileno(), 0)
    sources = make_sources(paths, follow=follow, replay=replay, speed=speed, stdin_fd=stdin_fd)
    app = TopApp(sources, window=window, theme=theme, refresh_hz=refresh_hz, keymap=keymap)
    app.start_readers()
    try:
        app.run()
    finally:
        for s in sources:
            s.stop()
        if stdin_tty is not None:
            stdin_tty.close()
    return int(app.return_code or 0)
