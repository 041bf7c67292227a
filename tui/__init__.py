"""The Textual terminal UI (not built yet). Until it lands, `onlooker run` on a terminal prints plain
console lines and reads typed questions from stdin; with --headless (or stdout not a terminal) it
prints JSON lines."""
