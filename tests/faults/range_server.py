"""A static file server that honours Range requests (FFmpeg seeks to an mp4's index), for the HTTP source test."""

import http.server, os, re, sys, threading
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        f = open(path, "rb")
        if not m:
            self.send_response(200); self.send_header("Content-Length", str(size))
            self.send_header("Accept-Ranges", "bytes"); self.end_headers(); return f
        start = int(m.group(1)); end = int(m.group(2)) if m.group(2) else size - 1
        f.seek(start)
        self.send_response(206); self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1)); self.send_header("Accept-Ranges", "bytes")
        self.end_headers(); return f
    def log_message(self, *a): pass
