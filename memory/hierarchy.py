"""The hierarchical KV memory.

    device  [ sink ][ recent window: segments of chunks, full detail ]         flat: window_tokens
    host    [ sealed segments: KV (pruned, optionally int8) + mean key per layer and KV head ]   host_mb
    disk    [ spilled segments: one safetensors file each ]  + an index row per segment (SQLite) disk_mb

`append` prefills a chunk on top of the device cache; earlier context is never recomputed. Chunks
gather into segments (a few seconds of stream). When the window passes its budget, its oldest
segments are sealed: their KV is sliced off the device into host RAM, compressed, indexed, and
spilled to disk past the host budget. Past the disk budget the oldest KV is dropped; its index row
and text stay. Every move is counted in `stats`, and drops are logged.

`context(question, now)` retrieves the segments a question needs (memory.retrieval) and assembles

    sink + retrieved segments (time order) + recent window        -> the question is prefilled on top

as a new cache (the device cache itself is untouched). Positions: "contiguous" rotates each piece's
keys by the position delta to where it now sits (RoPE shift, also M-RoPE: all three axes move
together); "original" leaves every key where it was ingested. With every segment retrieved and
nothing pruned, both give the same logits as full-context attention.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import kernels
from memory.config import MemoryConfig
from memory.embed import TextEmbedder
from memory.index import SegmentIndex
from memory.retrieval import Candidate, Retrieval, retrieve
from memory.segments import (
    Segment,
    SegmentFileError,
    SegmentKV,
    prune_by_value_norm,
    read_segment_file,
    read_segment_kv,
    write_segment_file,
)
from memory.timeref import parse_time_ref
from reasoning.backends.base import Backend, Chunk, fork_cache

log = logging.getLogger("onlooker.memory")

MB = 1 << 20


@dataclass
class ChunkRecord:
    kind: str
    t0: float
    t1: float
    text: str
    num_tokens: int
    pos_start: int          # position of the chunk's first token in the device cache (moves on re-positioning)
    pos_span: int


@dataclass(eq=False)
class WindowSegment:
    chunks: list[ChunkRecord]
    key_sum: torch.Tensor                 # (L, Hkv, D) sum of pre-RoPE keys
    orig_pos: int
    embedding: torch.Tensor | None = None

    @property
    def t0(self) -> float:
        return self.chunks[0].t0

    @property
    def t1(self) -> float:
        return self.chunks[-1].t1

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def pos_start(self) -> int:
        return self.chunks[0].pos_start

    @property
    def pos_span(self) -> int:
        return sum(c.pos_span for c in self.chunks)

    @property
    def text(self) -> str:
        return " ".join(c.text.strip() for c in self.chunks)


@dataclass
class MemoryStats:
    segments_sealed: int = 0
    segments_spilled: int = 0
    segments_dropped: int = 0         # KV removed by the disk budget (text kept in the index)
    segment_read_errors: int = 0      # spilled files that could not be read back
    tokens_sealed: int = 0
    tokens_pruned: int = 0
    host_bytes: int = 0
    disk_bytes: int = 0
    device_peak_bytes: int = 0        # largest assembled context (sink + retrieved + window)
    retrieved_segments: int = 0
    oom_shrinks: int = 0              # times the window was halved after running out of device memory


@dataclass
class AppendResult:
    logits: torch.Tensor                                   # next-token logits after the chunk, (vocab,)
    sealed: list[Segment] = field(default_factory=list)


@dataclass
class ContextView:
    cache: DynamicCache      # the caller may grow it freely
    next_pos: int            # position of the next token
    num_tokens: int
    retrieval: Retrieval | None = None
    placed: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)          # e.g. segments whose KV could not be read


def cache_from_layers(keys: list[torch.Tensor], values: list[torch.Tensor]) -> DynamicCache:
    cache = DynamicCache()
    for k, v in zip(keys, values, strict=True):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


class HierarchicalMemory:
    """Owned by the runtime thread; not thread-safe."""

    def __init__(self, backend: Backend, config: MemoryConfig, *, embedder: TextEmbedder | None = None,
                 index: SegmentIndex | None = None, spill_dir: Path | None = None, label: str = "") -> None:
        self.backend = backend
        self.config = config
        self.embedder = embedder if config.use_embeddings else None
        self.index = index
        self.spill_dir = spill_dir
        self.label = label or (index.session_id if index else "memory")
        self.cache = DynamicCache()
        self.sink: ChunkRecord | None = None
        self.window: list[WindowSegment] = []
        self.segments: list[Segment] = []
        self.next_pos = 0              # position of the next token in the device cache
        self.stream_pos = 0            # position it would have had with nothing ever moved
        self.window_budget = config.window_tokens
        self.stats = MemoryStats()
        self._tmp_dir: tempfile.TemporaryDirectory | None = None

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def sink_tokens(self) -> int:
        return self.sink.num_tokens if self.sink else 0

    @property
    def window_tokens(self) -> int:
        return sum(w.num_tokens for w in self.window)

    @property
    def num_tokens(self) -> int:
        return self.cache.get_seq_length()

    def device_bytes(self) -> int:
        return self.backend.kv_bytes(self.cache)

    # -- ingest ---------------------------------------------------------------------------------
    def set_sink(self, chunk: Chunk) -> torch.Tensor:
        if self.sink is not None:
            raise RuntimeError("sink already set")
        logits = self.backend.prefill(chunk, self.cache, self.next_pos)
        self.sink = ChunkRecord(chunk.kind, chunk.t0, chunk.t1, chunk.text, chunk.num_tokens, 0, chunk.pos_span)
        self.next_pos = self.stream_pos = chunk.pos_span
        if self.config.device_mb is not None:
            fit = int(self.config.device_mb * MB) // self.backend.kv_bytes_per_token()
            fit -= self.sink_tokens + (self.config.retrieve_tokens if self.config.retrieval else 0)
            if fit < 16:
                raise ValueError(f"device_mb={self.config.device_mb} leaves no room for a recent window "
                                 f"(sink {self.sink_tokens} tokens, retrieval {self.config.retrieve_tokens})")
            self.window_budget = min(self.config.window_tokens, fit)
        return logits

    def append(self, chunk: Chunk) -> AppendResult:
        if self.sink is None:
            raise RuntimeError("set_sink() first")
        logits, key_sum = self._prefill_or_shrink(chunk)
        rec = ChunkRecord(chunk.kind, chunk.t0, chunk.t1, chunk.text, chunk.num_tokens, self.next_pos, chunk.pos_span)
        last = self.window[-1] if self.window else None
        if (last is not None and chunk.t0 - last.t0 < self.config.segment_seconds
                and last.num_tokens + chunk.num_tokens <= self.config.segment_tokens):
            last.chunks.append(rec)
            last.key_sum += key_sum
            last.embedding = None
        else:
            self.window.append(WindowSegment([rec], key_sum, self.stream_pos))
        self.next_pos += chunk.pos_span
        self.stream_pos += chunk.pos_span
        return AppendResult(logits, self._evict())

    def _prefill_or_shrink(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill; if the device runs out of memory, undo the partial append, halve the window (sealing what
        no longer fits), log it and try again, until the window cannot shrink further."""
        while True:
            lengths = [layer.keys.shape[2] if layer.is_initialized else 0 for layer in self.cache.layers]
            try:
                return self.backend.prefill_keys(chunk, self.cache, self.next_pos)
            except torch.OutOfMemoryError:
                for layer, n in zip(self.cache.layers, lengths, strict=False):
                    if layer.is_initialized and layer.keys.shape[2] > n:      # layers that took the chunk
                        layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]
                if not self.config.shrink_on_oom or self.window_budget <= 16 or len(self.window) <= 1:
                    raise
                self.stats.oom_shrinks += 1
                log.warning("%s: out of device memory; shrinking the window from %d tokens", self.label,
                            self.window_budget)
                self.shrink_window(self.window_budget // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def shrink_window(self, tokens: int) -> list[Segment]:
        """Lower the window budget (e.g. the device ran out of memory) and seal what no longer fits."""
        self.window_budget = max(16, min(self.window_budget, tokens))
        log.warning("%s: recent window shrunk to %d tokens", self.label, self.window_budget)
        return self._evict()

    def flush(self, t_end: float) -> list[Segment]:
        """Seal the whole window and spill every host segment to disk (end of a stored session)."""
        sealed = self._evict(everything=True, t_end=t_end)
        if self.spill_dir is not None:
            for seg in self.segments:
                if seg.kv is not None:
                    self._spill(seg)
            self._enforce_disk_budget()
        return sealed

    def _evict(self, everything: bool = False, t_end: float = 0.0) -> list[Segment]:
        out: list[WindowSegment] = []
        while self.window and (everything or (len(self.window) > 1 and self.window_tokens > self.window_budget)):
            out.append(self.window.pop(0))
        if not out:
            return []
        s = self.sink_tokens
        n = sum(w.num_tokens for w in out)
        pos_delta = sum(w.pos_span for w in out)
        stacked_k = torch.stack([layer.keys[0, :, s:s + n] for layer in self.cache.layers])   # (L, Hkv, n, D)
        stacked_v = torch.stack([layer.values[0, :, s:s + n] for layer in self.cache.layers])
        contiguous = self.config.positions == "contiguous"
        for layer in self.cache.layers:
            kept_k = layer.keys[:, :, s + n:]
            if contiguous and kept_k.shape[2]:
                kept_k = kernels.rope_shift(kept_k, -pos_delta, self.backend.inv_freq)
            layer.keys = torch.cat([layer.keys[:, :, :s], kept_k], dim=2)
            layer.values = torch.cat([layer.values[:, :, :s], layer.values[:, :, s + n:]], dim=2)
        sealed = []
        offset = 0
        for i, w in enumerate(out):
            nxt = out[i + 1].t0 if i + 1 < len(out) else (self.window[0].t0 if self.window else max(t_end, w.t1))
            k = stacked_k[:, :, offset:offset + w.num_tokens]
            v = stacked_v[:, :, offset:offset + w.num_tokens]
            sealed.append(self._seal(w, k, v, max(w.t1, nxt)))
            offset += w.num_tokens
        if contiguous:
            for w in self.window:
                for c in w.chunks:
                    c.pos_start -= pos_delta
            self.next_pos -= pos_delta
        return sealed

    def _seal(self, w: WindowSegment, keys: torch.Tensor, values: torch.Tensor, t1: float) -> Segment:
        if not self.config.retain:          # window-only memory: the KV is dropped, the drop is counted
            seg = Segment(len(self.segments), w.t0, t1, w.text, w.num_tokens, w.pos_start, w.orig_pos, w.pos_span,
                          w.key_sum / max(1, w.num_tokens))
            self.stats.segments_dropped += 1
            self.stats.tokens_sealed += seg.num_tokens
            return seg
        kept = prune_by_value_norm(values, self.config.keep_ratio) if self.config.keep_ratio < 1.0 else None
        if kept is not None:
            keys, values = keys[:, :, kept.to(keys.device)], values[:, :, kept.to(values.device)]
        dtype = keys.dtype
        if self.config.quantize:            # on the device (fast), then only int8 crosses to the host
            qk, sk = kernels.quantize_int8(keys)
            qv, sv = kernels.quantize_int8(values)
            kv = SegmentKV(qk.cpu(), qv.cpu(), sk.cpu(), sv.cpu(), dtype)
        else:
            kv = SegmentKV(keys.to("cpu", copy=True), values.to("cpu", copy=True), dtype=dtype)
        seg = Segment(len(self.segments), w.t0, t1, w.text, w.num_tokens, w.pos_start, w.orig_pos, w.pos_span,
                      w.key_sum / max(1, w.num_tokens), kept, kv)
        seg.embedding = w.embedding if w.embedding is not None else self._embed_text(seg.text)
        self.segments.append(seg)
        st = self.stats
        st.segments_sealed += 1
        st.tokens_sealed += seg.num_tokens
        st.tokens_pruned += seg.num_tokens - seg.kept_tokens
        st.host_bytes += kv.nbytes
        if self.index is not None:
            seg.index_id = self.index.add(seg, "host")
        self._enforce_host_budget()
        return seg

    # -- host and disk tiers --------------------------------------------------------------------
    def _segment_path(self, seg: Segment) -> Path:
        if self.spill_dir is None:
            self._tmp_dir = tempfile.TemporaryDirectory(prefix="onlooker-kv-")
            self.spill_dir = Path(self._tmp_dir.name)
            log.info("%s: no session directory; spilling segments to %s", self.label, self.spill_dir)
        return self.spill_dir / f"segment-{seg.seg_id:06d}.safetensors"

    def _spill(self, seg: Segment) -> None:
        assert seg.kv is not None
        path = self._segment_path(seg)
        size = write_segment_file(path, seg)
        self.stats.host_bytes -= seg.kv.nbytes
        self.stats.disk_bytes += size
        self.stats.segments_spilled += 1
        seg.kv, seg.file = None, path
        seg.extra["file_bytes"] = size
        if self.index is not None and seg.index_id is not None:
            self.index.update(seg.index_id, tier="disk", kv_file=str(path), kv_bytes=size)

    def _enforce_host_budget(self) -> None:
        budget = self.config.host_mb * MB
        for seg in self.segments:
            if self.stats.host_bytes <= budget:
                break
            if seg.kv is not None:
                self._spill(seg)
        self._enforce_disk_budget()

    def _enforce_disk_budget(self) -> None:
        budget = self.config.disk_mb * MB
        for seg in self.segments:
            if self.stats.disk_bytes <= budget:
                break
            if seg.file is not None and seg.kv is None:
                size = seg.extra.pop("file_bytes", 0)
                seg.file.unlink(missing_ok=True)
                seg.file = None
                self.stats.disk_bytes -= size
                self.stats.segments_dropped += 1
                log.warning("%s: disk budget (%.0f MB) reached: dropped the KV of segment %d [%.1f-%.1f s]; its "
                            "text stays in the index", self.label, self.config.disk_mb, seg.seg_id, seg.t0, seg.t1)
                if self.index is not None and seg.index_id is not None:
                    self.index.update(seg.index_id, tier="dropped", kv_file=None, kv_bytes=0)

    def host_bytes(self) -> int:
        return self.stats.host_bytes

    def disk_bytes(self) -> int:
        return self.stats.disk_bytes

    def close(self) -> None:
        if self._tmp_dir is not None:
            self._tmp_dir.cleanup()
            self._tmp_dir = None

    # -- answering ------------------------------------------------------------------------------
    def _embed_text(self, text: str) -> torch.Tensor | None:
        return self.embedder.encode([text])[0] if self.embedder is not None else None

    def candidates(self) -> list[Candidate]:
        cands = [Candidate(i, s.t0, s.t1, s.text, s.kept_tokens, s.tier == "dropped", s.rep_key, s.embedding)
                 for i, s in enumerate(self.segments)]
        for j, w in enumerate(self.window):
            if w.embedding is None:
                w.embedding = self._embed_text(w.text)
            t1 = self.window[j + 1].t0 if j + 1 < len(self.window) else w.t1
            cands.append(Candidate(-1 - j, w.t0, max(t1, w.t1), w.text, 0, True,
                                   w.key_sum / max(1, w.num_tokens), w.embedding))
        return cands

    def context(self, question: str | None = None, now: float | None = None) -> ContextView:
        """The context a question is answered from. Without a question (or with retrieval off): sink + window."""
        if question is None or not self.config.retrieval:
            return self.assemble([])
        now = self.segments[-1].t1 if now is None and self.segments else (now or 0.0)
        ref = parse_time_ref(question, now)
        if ref is not None and ref.kind == "now":     # about the present: the window has it, skip the search
            view = self.assemble([])
            view.retrieval = Retrieval(ref, [], [])
            return view
        cands = self.candidates()
        query = None
        if self.config.use_qk and cands:
            # the question's own words, without the chat template: template tokens dominate a mean query
            probe = self.backend.text_chunk("question", question, now, now)
            query = self.backend.question_query(probe, fork_cache(self.cache), self.next_pos)
        embed = (lambda text: self.embedder.encode([text])[0]) if self.embedder is not None else None
        r = retrieve(question, now, cands, query=query, embed=embed, top_k=self.config.top_k,
                     max_tokens=self.config.retrieve_tokens)
        placed = [self.segments[c.key] for c in r.selected if c.key >= 0 and self.segments[c.key].tier != "dropped"]
        view = self.assemble(placed)
        view.retrieval = r
        self.stats.retrieved_segments += len(view.placed)
        return view

    def _segment_kv(self, seg: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        kv = seg.kv
        if kv is None:
            assert seg.file is not None
            kv = read_segment_kv(seg.file)
        dev = self.backend.device
        dtype = self.cache.layers[0].keys.dtype
        if kv.quantized:                    # int8 crosses to the device, dequantized there
            assert kv.key_scale is not None and kv.value_scale is not None
            return (kernels.dequantize_int8(kv.keys.to(dev), kv.key_scale.to(dev), dtype),
                    kernels.dequantize_int8(kv.values.to(dev), kv.value_scale.to(dev), dtype))
        return kv.keys.to(dev, dtype), kv.values.to(dev, dtype)

    def assemble(self, segments: list[Segment]) -> ContextView:
        """sink + `segments` (time order) + window, as a new cache."""
        if not segments:
            view = ContextView(fork_cache(self.cache), self.next_pos, self.num_tokens)
            self.stats.device_peak_bytes = max(self.stats.device_peak_bytes, self.device_bytes())
            return view
        s = self.sink_tokens
        contiguous = self.config.positions == "contiguous"
        inv_freq = self.backend.inv_freq
        pos = self.sink.pos_span if self.sink else 0
        pieces_k: list[torch.Tensor] = []
        pieces_v: list[torch.Tensor] = []
        placed: list[Segment] = []
        notes: list[str] = []
        for seg in sorted(segments, key=lambda x: x.t0):
            try:
                k, v = self._segment_kv(seg)
            except SegmentFileError as e:
                self.stats.segment_read_errors += 1
                notes.append(f"{self.label}: segment {seg.seg_id} [{seg.t0:.1f}-{seg.t1:.1f} s]: {e}; "
                             f"answering without it")
                log.warning("%s", notes[-1])
                continue
            target = pos if contiguous else seg.orig_pos
            if target != seg.pos_start:
                k = kernels.rope_shift(k, target - seg.pos_start, inv_freq)
            pieces_k.append(k)
            pieces_v.append(v)
            placed.append(seg)
            pos += seg.pos_span
        window_start = self.window[0].pos_start if self.window else self.next_pos
        w_delta = (pos - window_start) if contiguous else 0
        keys, values = [], []
        for li, layer in enumerate(self.cache.layers):
            wk = layer.keys[:, :, s:]
            if w_delta and wk.shape[2]:
                wk = kernels.rope_shift(wk, w_delta, inv_freq)
            keys.append(torch.cat([layer.keys[:, :, :s], *(p[li].unsqueeze(0) for p in pieces_k), wk], dim=2))
            values.append(torch.cat([layer.values[:, :, :s], *(p[li].unsqueeze(0) for p in pieces_v),
                                     layer.values[:, :, s:]], dim=2))
        cache = cache_from_layers(keys, values)
        view = ContextView(cache, self.next_pos + w_delta, cache.get_seq_length(), placed=placed, notes=notes)
        self.stats.device_peak_bytes = max(self.stats.device_peak_bytes, self.backend.kv_bytes(cache))
        return view

    # -- a stored session -----------------------------------------------------------------------
    @classmethod
    def from_segments(cls, backend: Backend, config: MemoryConfig, segments: list[Segment], *,
                      embedder: TextEmbedder | None = None, label: str = "") -> HierarchicalMemory:
        """A read-only memory over a stored session: the sink on the device, every segment on disk."""
        mem = cls(backend, config, embedder=embedder, label=label)
        mem.set_sink(backend.system_chunk())
        for seg in sorted(segments, key=lambda x: x.t0):
            if seg.embedding is None and mem.embedder is not None:
                seg.embedding = mem._embed_text(seg.text)
            mem.segments.append(seg)
        if mem.segments and config.positions == "original":
            last = max(mem.segments, key=lambda x: x.orig_pos)
            mem.next_pos = mem.stream_pos = last.orig_pos + last.pos_span
        return mem


def segments_from_index(index: SegmentIndex, kv_shape: tuple[int, int, int]) -> list[Segment]:
    """The segments of a stored session as its index describes them (KV left on disk)."""
    out = []
    for row in index.rows():
        rep, emb = SegmentIndex.row_tensors(row)
        seg = Segment(int(row["id"]), row["t0"], row["t1"], row["text"] or "", int(row["num_tokens"] or 0),
                      int(row["pos_start"] or 0), int(row["orig_pos"] or 0), int(row["pos_span"] or 0),
                      rep if rep is not None else torch.zeros(kv_shape), None, None,
                      Path(row["kv_file"]) if row.get("kv_file") else None, emb, int(row["id"]))
        if seg.file is None:
            log.warning("session %s: segment %d [%.1f-%.1f s] has no KV on disk (%s); its text is still searchable",
                        index.session_id, seg.seg_id, seg.t0, seg.t1, row.get("tier") or "never written")
        out.append(seg)
    return out


def segments_from_files(kv_dir: Path) -> tuple[list[Segment], list[str]]:
    """The segments of a stored session read from its segment files alone (when the index is damaged).
    Returns (segments, problems)."""
    segs, problems = [], []
    for path in sorted(kv_dir.glob("segment-*.safetensors")):
        try:
            seg = read_segment_file(path)
        except SegmentFileError as e:
            problems.append(str(e))
            continue
        seg.extra.pop("kv", None)          # read again when placed; keeps RAM flat
        segs.append(seg)
    return segs, problems
