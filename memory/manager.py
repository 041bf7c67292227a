"""The hierarchical KV memory's policy: window, seal, retrieve, assemble (vLLM's KVCacheManager role).

    device  [ sink ][ recent window: segments of chunks, full detail ]          flat: window_tokens
    host    [ sealed segments: KV (pruned, optionally int8) + mean key ]        memory.segment_store
    disk    [ spilled segments: one safetensors file each ] + index rows        memory.segment_store

`append` prefills a chunk on top of the device cache; earlier context is never recomputed. Chunks gather
into segments (memory.window). When the window passes its budget, its oldest segments are sealed: their
KV is sliced off the device (memory.kv_cache), compressed, sent to the host without waiting for the device
(memory.landing) and handed to the segment store when it lands.

`context(question, now)` retrieves what a question needs (memory.retrieval) and assembles

    sink + retrieved segments (time order) + recent window        -> the question is prefilled on top

as a new cache (the device cache itself is untouched). Positions: "contiguous" rotates each piece's keys
by the delta to where it now sits (RoPE shift; M-RoPE axes move together); "original" leaves every key
where it was ingested. With every segment retrieved and nothing pruned, both give full-context logits.

Video blocks (Qwen2.5-VL): a chunk may leave a video block open. Its next pairs join the same segment; anything
else appended first gets the block's closer, and a context view closes it on its own fork. A block is never split
across segments (a segment may pass `segment_tokens` by part of one), so a retrieved segment holds whole videos.
"""

from __future__ import annotations

import bisect
import logging
from pathlib import Path

import torch

import onlooker_kernels as kernels
from memory import kv_cache, views
from memory.config import MemoryConfig
from memory.embed import TextEmbedder
from memory.index import SegmentIndex
from memory.landing import Landing
from memory.retrieval import Candidate, Retrieval, SearchHit, qk_scale, retrieve, top_hits
from memory.segment_store import MB, MemoryStats, SegmentStore
from memory.segments import Segment, SegmentKV, compress, kv_from_parts, squeeze_kv
from memory.slab import HostSlabs, KeyBank
from memory.timeref import parse_time_ref
from memory.views import AppendResult, ContextView, place_segments
from memory.window import ChunkRecord, WindowSegment
from model.backend import Backend
from model.chunk import Chunk, VideoBlock

log = logging.getLogger("onlooker.memory")

__all__ = ["HierarchicalMemory", "ContextView", "AppendResult", "MemoryStats", "SearchHit"]


class HierarchicalMemory:
    """Owned by the runtime thread; not thread-safe."""

    def __init__(self, backend: Backend, config: MemoryConfig, *, embedder: TextEmbedder | None = None,
                 index: SegmentIndex | None = None, spill_dir: Path | None = None, label: str = "") -> None:
        self.backend = backend
        self.config = config
        self.embedder = embedder if config.use_embeddings else None
        self.label = label or (index.session_id if index else "memory")
        self.stats = MemoryStats()
        self.store = SegmentStore(config.host_mb, config.disk_mb, self.stats, index=index, spill_dir=spill_dir,
                                  label=self.label)
        self.cache = kv_cache.new_cache()
        self.sink: ChunkRecord | None = None
        self.window: list[WindowSegment] = []
        self.next_pos = 0              # position of the next token in the device cache
        self.stream_pos = 0            # position it would have had with nothing ever moved
        self.window_budget = config.window_tokens
        self._notes: list[tuple[float, str]] = []   # (stream time, text) ahead of the chunk that will hold it
        self._open: VideoBlock | None = None         # the video block the last chunk left open
        self.slabs = HostSlabs()                     # sealed segments' mean keys and embeddings (memory.slab)
        self.keybank = KeyBank()                     # the same mean keys as float32 rows, for scoring them all at once
        self.landing = Landing()                     # sealed segments (and checkpoints) on their way to the host
        self._sealing = 0                            # sealed segments among them

    @property
    def segments(self) -> list[Segment]:
        """The sealed segments, every one still in flight to the host landed first (memory.landing)."""
        self.landing.land(wait=True)
        return self.store.segments

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
        return kv_cache.cache_bytes(self.cache)

    def _rotate(self, keys: torch.Tensor, delta: int) -> torch.Tensor:
        return kernels.rope_shift(keys, delta, self.backend.inv_freq)

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
        return self.append_all([chunk])

    def append_all(self, chunks: list[Chunk]) -> AppendResult:
        """Chunks in stream order in one prefill (a video block left open before a chunk that does not continue it
        is closed first, in the same prefill); then each joins the window in turn, and what no longer fits is
        sealed once, after all of them. Equal to appending them one by one with the window sealed only after the
        last (tests/unit/test_memory_batched.py); one prefill, not several, cuts the host's launches."""
        if self.sink is None or not chunks:
            raise RuntimeError("set_sink() first" if chunks else "no chunks to append")
        seq, open_block = [], self._open
        for chunk in chunks:
            if open_block is not None and (not chunk.continues or chunk.block is None):
                open_block.closed = True                 # by a closer, or by a chunk that does not continue it
                if not chunk.continues:
                    seq.append(self.backend.block_closer(open_block))
            seq.append(chunk)
            open_block = chunk.block
        logits, key_sums = views.prefill_or_shrink(self, seq)
        for chunk, key_sum in zip(seq, key_sums, strict=True):
            self._record(chunk, key_sum)
        return AppendResult(logits, self._evict())

    def _record(self, chunk: Chunk, key_sum: torch.Tensor) -> None:
        """A prefilled chunk joins the window: the newest segment, or a new one (the one before checkpointed)."""
        rec = ChunkRecord(chunk.kind, chunk.t0, chunk.t1, chunk.text, chunk.num_tokens, self.next_pos, chunk.pos_span)
        last = self.window[-1] if self.window else None
        fits = last is not None and (chunk.t0 - last.t0 < self.config.segment_seconds
                                     and last.num_tokens + chunk.num_tokens <= self.config.segment_tokens)
        if last is not None and (chunk.continues or fits):
            last.chunks.append(rec)
            last.key_sum += key_sum
            last.embedding = None
        else:
            if last is not None:
                self._checkpoint(last, chunk.t0)
            self.window.append(WindowSegment([rec], key_sum, self.stream_pos))
        while self._notes and self._notes[0][0] <= chunk.t1:
            self.window[-1].notes.append(self._notes.pop(0)[1])
            self.window[-1].embedding = None
        self.next_pos += chunk.pos_span
        self.stream_pos += chunk.pos_span
        self._open = chunk.block

    def _checkpoint(self, w: WindowSegment, t1: float) -> None:
        """A window segment has closed: in a stored session its KV and index row go to disk as soon as its copy
        lands (memory.landing), so a crash loses at most the open segment and any copy still in flight
        (memory.segment_store.SegmentStore.checkpoint)."""
        if not (self.config.retain and self.config.checkpoint and self.store.durable):
            return
        start = self.sink_tokens + self.window_tokens - w.num_tokens        # `w` is the newest window segment
        k, v = kv_cache.read_range(self.cache, start, w.num_tokens)
        if w.embedding is None:
            w.embedding = self._embed_text(w.text)
        seg = Segment(len(self.store.segments) + self._sealing + len(self.window) - 1, w.t0, max(w.t1, t1), w.text,
                      w.num_tokens, w.pos_start, w.orig_pos, w.pos_span, w.rep_key.to(torch.float16),
                      embedding=w.embedding)

        path = self.store.segment_path(seg)

        def write(h: dict, dtype: torch.dtype = k.dtype) -> dict:      # on the landing's helper thread off a GPU
            seg.rep_key, seg.kv = h["rep"], kv_from_parts(h, dtype, self.config.quantize_bits)
            return {"written": self.store.write(seg, path)}

        def landed(h: dict) -> None:
            seg.index_id = self.store.checkpoint(seg, h["written"])
            if self.config.keep_ratio < 1.0:     # else sealing takes this very KV (`_seal`): kept on the host
                seg.kv = None
        w.checkpoint = seg                       # its KV arrives with this flight, before any later one lands
        self.landing.send({**squeeze_kv(k, v, bool(self.config.quantize), self.config.quantize_bits),
                           "rep": seg.rep_key}, landed, write)

    def shrink_window(self, tokens: int) -> list[Segment]:
        """Lower the window budget (e.g. the device ran out of memory) and seal what no longer fits."""
        self.window_budget = max(16, min(self.window_budget, tokens))
        log.warning("%s: recent window shrunk to %d tokens", self.label, self.window_budget)
        return self._evict()

    def annotate(self, t: float, text: str) -> None:
        """Words about stream time `t` from beside the model (the perception text of a frame, a caption): they
        join the text of the segment holding `t`, so search by words and embeddings finds it. A note for a
        time no chunk has reached yet waits for the chunk that will hold it."""
        last_t1 = self.window[-1].t1 if self.window else (self.segments[-1].t1 if self.segments else -1.0)
        if t > last_t1:
            bisect.insort(self._notes, (t, text), key=lambda n: n[0])
            return
        for w in reversed(self.window):
            if w.t0 <= t:
                w.notes.append(text)
                w.embedding = None
                return
        for seg in reversed(self.segments):
            if seg.t0 <= t or seg is self.segments[0]:
                self.add_text(seg, text)
                return

    def add_text(self, seg: Segment, text: str) -> None:
        """Words about a sealed segment (its caption): its index text and embedding follow."""
        full = f"{seg.text} {text}"
        self.store.retext(seg, full, self._embed_text(full))

    def segment_view(self, seg: Segment) -> ContextView | None:
        """sink + this one sealed segment, nothing else (what its caption is written from); None when its KV is
        gone or cannot be read."""
        view = self.assemble([seg], window=False)
        return view if view.placed else None

    def flush(self, t_end: float) -> list[Segment]:
        """Seal the whole window and write every host segment to disk (end of a stored session)."""
        closed = [] if self._open is None else self.append_all([self.backend.block_closer(self._open)]).sealed
        if self._notes and self.window:                # notes past the last chunk belong to the last segment
            self.window[-1].notes.extend(text for _, text in self._notes)
            self._notes = []
        sealed = closed + self._evict(everything=True, t_end=t_end)
        if self.store.spill_dir is not None:
            self.store.spill_all()
        return sealed

    def _evict(self, everything: bool = False, t_end: float = 0.0) -> list[Segment]:
        """Seal what no longer fits the window (everything with `everything`); -> the segments that landed."""
        out: list[WindowSegment] = []
        while self.window and (everything or (len(self.window) > 1 and self.window_tokens > self.window_budget)):
            out.append(self.window.pop(0))
        if not out:
            return self.landing.land(wait=everything)
        n = sum(w.num_tokens for w in out)
        pos_delta = sum(w.pos_span for w in out)
        contiguous = self.config.positions == "contiguous"
        keys, values = kv_cache.take_front(self.cache, self.sink_tokens, n, self._rotate if contiguous else None,
                                           -pos_delta)                                   # (L, Hkv, n, D)
        offset = 0
        for i, w in enumerate(out):
            nxt = out[i + 1].t0 if i + 1 < len(out) else (self.window[0].t0 if self.window else max(t_end, w.t1))
            k = keys[:, :, offset:offset + w.num_tokens]
            v = values[:, :, offset:offset + w.num_tokens]
            self._seal(w, k, v, max(w.t1, nxt))
            offset += w.num_tokens
        if contiguous:
            for w in self.window:
                for c in w.chunks:
                    c.pos_start -= pos_delta
            self.next_pos -= pos_delta
        return self.landing.land(wait=everything)

    def _seal(self, w: WindowSegment, keys: torch.Tensor, values: torch.Tensor, t1: float) -> None:
        """Start `w`'s trip off the device (memory.landing); it joins the store when it lands (`_landed`). Its mean
        key goes to the host in float16: what the index stores, so a live session ranks as its stored copy does."""
        self.stats.tokens_sealed += w.num_tokens
        seg = Segment(len(self.store.segments) + self._sealing, w.t0, t1, w.text, w.num_tokens, w.pos_start,
                      w.orig_pos, w.pos_span, w.rep_key.to(torch.float16))
        c, dtype = self.config, keys.dtype
        if not c.retain:                    # window-only memory: the KV is dropped, the drop is counted
            self.stats.segments_dropped += 1
            return self.landing.send({"rep": seg.rep_key}, lambda h: self._landed(seg, w, h, None))
        self._sealing += 1
        cp = w.checkpoint
        if cp is not None and c.keep_ratio >= 1.0:
            # nothing is pruned at sealing, so the checkpoint's KV (quantized as sealing would, its keys at the
            # checkpoint's positions) is the sealed KV: no second quantize and copy, and its file stays as written.
            # Read when this flight lands: flights land in order, so the checkpoint's has (its copy may still have
            # been on its way when sealing began)
            seg.pos_start = cp.pos_start
            return self.landing.send({"rep": seg.rep_key}, lambda h: self._landed(seg, w, h, cp.kv))
        parts = compress(keys, values, c.keep_ratio, bool(c.quantize), c.quantize_bits, c.prune_by)
        self.landing.send({**parts, "rep": seg.rep_key}, lambda h: self._landed(
            seg, w, h, kv_from_parts(h, dtype, c.quantize_bits)))

    def _landed(self, seg: Segment, w: WindowSegment, host: dict, kv: SegmentKV | None) -> Segment:
        seg.rep_key = self.slabs.put(host["rep"])
        if kv is None:
            return seg
        seg.kept, seg.kv, self._sealing = host.get("kept"), kv, self._sealing - 1
        cp = w.checkpoint
        if cp is not None:                  # its checkpoint's row and file are replaced by the sealed segment
            seg.index_id, seg.file, seg.extra = cp.index_id, cp.file, cp.extra
            cp.kv = None
        emb = w.embedding if w.embedding is not None else self._embed_text(seg.text)
        seg.embedding = self.slabs.put(emb) if emb is not None else None
        self.stats.segments_sealed += 1
        self.stats.tokens_pruned += seg.num_tokens - seg.kept_tokens
        self.store.add(seg)
        return seg

    def close(self) -> None:
        self.landing.land(wait=True)
        self.store.close()

    # -- retrieval ------------------------------------------------------------------------------
    def _embed_text(self, text: str) -> torch.Tensor | None:
        return self.embedder.embed_words(text) if self.embedder is not None else None

    def candidates(self) -> list[Candidate]:
        cands = [Candidate(i, s.t0, s.t1, s.text, s.kept_tokens, s.tier == "dropped", s.rep_key, s.embedding)
                 for i, s in enumerate(self.segments)]
        for j, w in enumerate(self.window):
            if w.embedding is None:
                w.embedding = self._embed_text(w.text)
            t1 = self.window[j + 1].t0 if j + 1 < len(self.window) else w.t1
            cands.append(Candidate(-1 - j, w.t0, max(t1, w.t1), w.text, 0, True, w.rep_key, w.embedding))
        return cands

    def _retrieve(self, question: str, now: float, cands: list[Candidate], use_model: bool, top_k: int,
                  max_tokens: int) -> Retrieval:
        query = scores = None
        if use_model and self.config.use_qk and cands:
            # the question's own words, without the chat template: template tokens dominate a mean query
            probe = self.backend.text_chunk("question", question, now, now)
            query = self.backend.question_query(probe, kv_cache.fork_cache(self.cache), self.next_pos)
            scores = self._qk_scores(query, cands)
        embedder = self.embedder
        embed = (lambda text: embedder.encode([text])[0]) if embedder is not None else None
        return retrieve(question, now, cands, query=query, embed=embed, top_k=top_k, max_tokens=max_tokens,
                        keyframe_seconds=self.config.keyframe_seconds, model_scores=scores)

    def _qk_scores(self, query: torch.Tensor, cands: list[Candidate]) -> torch.Tensor:
        """The query against every candidate's mean key: sealed ones from the key bank, then the window's."""
        self.keybank.sync(self.segments)
        dots, n = self.keybank.dot(query, extra=[w.rep_key for w in self.window]), len(self.segments)
        return qk_scale(dots[[c.key if c.key >= 0 else n - 1 - c.key for c in cands]], query)

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
        r = self._retrieve(question, now, self.candidates(), True, self.config.top_k, self.config.retrieve_tokens)
        placed = [self.segments[c.key] for c in r.selected if c.key >= 0 and self.segments[c.key].tier != "dropped"] \
            if self.config.place_kv else []
        view = self.assemble(placed)
        view.retrieval = r
        self.stats.retrieved_segments += len(view.placed)
        return view

    def search(self, text: str, now: float, k: int = 5) -> list[SearchHit]:
        """Segments (sealed and in the window) best matching `text`, by time reference or content; no model call."""
        cands = self.candidates()
        return top_hits(self._retrieve(text, now, cands, False, k, 10**9), cands, k)

    def assemble(self, segments: list[Segment], window: bool = True) -> ContextView:
        """sink + `segments` (time order) + window, as a new cache; without the window when `window` is False
        (the next position is then right after the last placed segment)."""
        if not segments and window:
            view = ContextView(kv_cache.fork_cache(self.cache), self.next_pos, self.num_tokens)
            self.stats.device_peak_bytes = max(self.stats.device_peak_bytes, self.device_bytes())
            return self._closed_view(view)
        contiguous = self.config.positions == "contiguous"
        pieces, placed, notes, pos = place_segments(self, segments, self.sink.pos_span if self.sink else 0)
        if window:
            window_start = self.window[0].pos_start if self.window else self.next_pos
            w_delta = (pos - window_start) if contiguous else 0
            cache = kv_cache.splice(self.cache, self.sink_tokens, pieces, self._rotate, w_delta)
            next_pos = self.next_pos + w_delta
        else:
            cache = kv_cache.splice(kv_cache.prefix(self.cache, self.sink_tokens), self.sink_tokens, pieces, None, 0)
            next_pos = pos if contiguous else (placed[-1].orig_pos + placed[-1].pos_span if placed else pos)
        view = ContextView(cache, next_pos, cache.get_seq_length(), placed=placed, notes=notes)
        self.stats.device_peak_bytes = max(self.stats.device_peak_bytes, kv_cache.cache_bytes(cache))
        return self._closed_view(view) if window else view

    def _closed_view(self, view: ContextView) -> ContextView:
        """A view that ends in an open video block gets the block's closer on its own cache."""
        if self._open is not None:
            closer = self.backend.block_closer(self._open)
            self.backend.prefill(closer, view.cache, view.next_pos)
            view.next_pos += closer.pos_span
            view.num_tokens += closer.num_tokens
        return view
